"""pl_energy: energy-based learning algorithms (PC, Z-IL, PC-Nudge, EP, CHL) beside backprop.

The core (``pl_energy.core``, ``pl_energy.algorithms``) is pure torch; the Lightning shell lives
in ``pl_energy.module``, ``pl_energy.callbacks``, ``pl_energy.data`` and ``pl_energy.cli``.
"""

from .algorithms import (ALGORITHMS, Algorithm, Estimate, EstimateErrorWarning, NotConvergedWarning, PrecisionWarning,
                         build_algorithm)
from .core import DivergenceError, InferenceReport, InferenceTrace, mlp

__all__ = ["ALGORITHMS", "Algorithm", "DivergenceError", "EnergyModule", "Estimate",
           "EstimateErrorWarning", "GradientAgreement", "InferenceReport", "InferenceTrace", "NotConvergedWarning", "PrecisionWarning",
           "build_algorithm", "mlp"]
__version__ = "0.1.0"

_LIGHTNING = {"EnergyModule": "module", "GradientAgreement": "callbacks"}
#: Subpackages of the shell (Lightning, torchvision, matplotlib), loaded on first use as attributes too.
_SUBMODULES = ("data", "module", "callbacks", "cli", "plotting")


def __getattr__(name: str):
    """The Lightning shell is imported on first use, so the core stays importable without it
    (``pl_energy.data.MNISTDataModule`` works after a bare ``import pl_energy``)."""
    import importlib

    if name in _LIGHTNING:
        return getattr(importlib.import_module(f".{_LIGHTNING[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
