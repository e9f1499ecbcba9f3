"""``bp``: autograd backprop, the reference every other algorithm is measured against."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..core.losses import Loss
from .base import Algorithm, Estimate
from .gradients import backprop_gradients


@dataclass
class Backprop(Algorithm):
    """Backprop through the network (autograd); no hyper-parameters."""

    name = "bp"
    one_forward_per_batch = False  # one forward pass: Dropout and BatchNorm as autograd has them
    records_graph = True

    def compute(self, network: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss,
                record: bool) -> Estimate:
        gradients, output, value = backprop_gradients(network, inputs, targets, loss)
        return Estimate(gradients, output, value)
