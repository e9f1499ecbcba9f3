"""pl_energy: energy-based learning algorithms (PC, Z-IL, PC-Nudge, EP, CHL) beside backprop.

The core (``pl_energy.core``, ``pl_energy.algorithms``) is pure torch; the Lightning shell lives
in ``pl_energy.module``, ``pl_energy.callbacks``, ``pl_energy.data`` and ``pl_energy.cli``.
"""

__all__ = ["ALGORITHMS", "Algorithm", "DivergenceError", "EnergyModule", "Estimate",
           "EstimateErrorWarning", "GradientAgreement", "InferenceReport", "InferenceTrace", "NotConvergedWarning", "PrecisionWarning",
           "build_algorithm", "mlp"]
__version__ = "0.1.0"

#: Where each name of ``__all__`` lives.
_HOMES = {"ALGORITHMS": "algorithms", "Algorithm": "algorithms", "Estimate": "algorithms",
          "EstimateErrorWarning": "algorithms", "NotConvergedWarning": "algorithms",
          "PrecisionWarning": "algorithms", "build_algorithm": "algorithms",
          "DivergenceError": "core", "InferenceReport": "core", "InferenceTrace": "core", "mlp": "core",
          "EnergyModule": "module", "GradientAgreement": "callbacks"}
#: Subpackages, loaded on first use as attributes too.
_SUBMODULES = ("algorithms", "core", "data", "module", "callbacks", "cli", "plotting")


def __getattr__(name: str):
    """Everything is imported on first use: ``import pl_energy`` loads neither torch nor Lightning,
    so that ``pl-energy --help`` answers at once and the core stays importable without the shell
    (``pl_energy.data.MNISTDataModule`` works after a bare ``import pl_energy``)."""
    import importlib

    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
