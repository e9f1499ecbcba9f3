"""Every algorithm is a small configuration of the energy core.

Each module here defines algorithms; a class that sets ``name`` registers itself
(``Algorithm.__init_subclass__``). The papers' algorithms are imported first, in the order the
CLI lists them; any other module of this package (a new algorithm in a file of its own) follows.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from . import backprop, predictive_coding, zero_divergence, equilibrium_propagation, contrastive_hebbian  # noqa: F401

for _module in _pkgutil.iter_modules(__path__):
    if _module.name != "registry":
        _importlib.import_module(f".{_module.name}", __name__)

from .base import Algorithm, Estimate  # noqa: E402
from .warnings import BatchStatisticsWarning, EstimateErrorWarning, NotConvergedWarning, PrecisionWarning  # noqa: E402
from .registry import ALGORITHMS, algorithm_class, build_algorithm, hyperparameters_of  # noqa: E402

__all__ = ["ALGORITHMS", "Algorithm", "BatchStatisticsWarning", "Estimate", "EstimateErrorWarning", "NotConvergedWarning", "PrecisionWarning", "algorithm_class",
           "build_algorithm", "hyperparameters_of"]
