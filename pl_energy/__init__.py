"""pl_energy: energy-based learning algorithms (PC, Z-IL, PC-Nudge, EP, CHL) beside backprop.

The core (``pl_energy.core``, ``pl_energy.algorithms``) is pure torch; the Lightning shell lives
in ``pl_energy.module``, ``pl_energy.callbacks``, ``pl_energy.data`` and ``pl_energy.cli``.
"""

from .algorithms import ALGORITHMS, Algorithm, Estimate, build_algorithm
from .core import DivergenceError, InferenceTrace, mlp

__all__ = ["ALGORITHMS", "Algorithm", "DivergenceError", "Estimate", "InferenceTrace",
           "build_algorithm", "mlp"]
__version__ = "0.1.0"
