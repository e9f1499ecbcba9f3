"""Every algorithm is a small configuration of the energy core."""

from .base import Algorithm, Estimate, NotConvergedWarning, PrecisionWarning
from .registry import ALGORITHMS, algorithm_class, build_algorithm, hyperparameters_of

__all__ = ["ALGORITHMS", "Algorithm", "Estimate", "NotConvergedWarning", "PrecisionWarning", "algorithm_class",
           "build_algorithm", "hyperparameters_of"]
