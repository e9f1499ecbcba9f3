"""The energy core, pure torch: networks, energies, inference, traces."""

from .hopfield import HopfieldEnergy
from .inference import DivergenceError, relax
from .losses import LOSSES, Loss
from .networks import mlp
from .predictive_coding import PredictiveCodingEnergy
from .trace import InferenceTrace

__all__ = ["DivergenceError", "HopfieldEnergy", "InferenceTrace", "LOSSES", "Loss",
           "PredictiveCodingEnergy", "mlp", "relax"]
