"""The energy core, pure torch: networks, energies, inference solvers, traces."""

from .adaptive_sweep import AdaptiveEvenOddSweep  # registers solver="adaptive_sweep"
from .energy import Energy
from .hopfield import HopfieldEnergy
from .inference import DivergenceError, InferenceReport, Relaxation, relax
from .losses import LOSSES, Loss
from .newton import NewtonErrorDescent  # registers solver="newton"
from .networks import mlp
from .predictive_coding import PredictiveCodingEnergy
from .solvers import SOLVERS
from .trace import InferenceTrace

__all__ = ["DivergenceError", "Energy", "HopfieldEnergy", "InferenceReport", "InferenceTrace",
           "LOSSES", "Loss", "PredictiveCodingEnergy", "Relaxation", "SOLVERS", "mlp", "relax"]
