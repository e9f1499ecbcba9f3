"""``pc`` (inference learning) and ``pc_nudge``: PC inference to equilibrium, then one update.

Both minimise E = I + lam L (seed 003 Eq. 10) from the free equilibrium (the feedforward pass)
and return (1/lam) dE/dtheta at the clamped/nudged equilibrium (seed 003 Eq. 21; the PC free-phase
weight gradient is zero, Eq. 20). ``centered`` runs a +lam and a -lam phase and returns
(dE^{+lam}/dtheta - dE^{-lam}/dtheta) / (2 lam), whose error is O(lam^2) instead of O(lam).

- ``pc`` (Whittington & Bogacz 2017; seed 000 Alg. 1): lam = 1, the target clamps the output;
  BP is approached in the weak-feedback limit: ``gamma`` < 1 sets the precision ratio
  pi_{l+1}/pi_l = gamma at every layer (seed 003 Eq. 18), i.e. pi_l = gamma^-(L-l).
- ``pc_nudge`` (seed 003 Sec. 4, Eq. 25, Alg. A.1.3): lam = 0.01, 50 steps of 0.1; BP is
  approached in the weak-supervision limit lam -> 0. The (1/lam) rescaling is the paper's
  learning rate eta/lam.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..core.losses import Loss
from ..core.networks import layers_of
from ..core.predictive_coding import PredictiveCodingEnergy
from .base import Estimate, RelaxingAlgorithm


@dataclass
class PredictiveCoding(RelaxingAlgorithm):
    lam: float = 1.0
    gamma: float = 1.0
    centered: bool = False
    name = "pc"

    def __post_init__(self):
        if self.lam == 0:
            raise ValueError("lam must be non-zero: the update is (1/lam) dE/dtheta")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma (feedback strength) must lie in (0, 1], got {self.gamma}")

    def energy(self, network: nn.Module, loss: Loss, lam: float) -> PredictiveCodingEnergy:
        depth = len(layers_of(network))
        precisions = [self.gamma ** -(depth - index) for index in range(1, depth)]
        return PredictiveCodingEnergy(network, loss, lam=lam, precisions=precisions)

    def phase(self, network: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss, lam: float,
              record: bool):
        """Relax from the free equilibrium under E = I + lam L; return the state and its trace."""
        energy = self.energy(network, loss, lam)
        state = energy.free_state(inputs, targets)
        free_output = state.output
        return energy, state, free_output, self.relax(energy, state, record)

    def estimate(self, network: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss,
                 record: bool) -> Estimate:
        energy, state, output, trace = self.phase(network, inputs, targets, loss, self.lam, record)
        if not self.centered:
            per_layer = energy.all_parameter_gradients(state, scale=1 / self.lam)
        else:
            negative, negative_state, _, _ = self.phase(network, inputs, targets, loss, -self.lam, False)
            half = 1 / (2 * self.lam)
            per_layer = [
                [g - h for g, h in zip(layer, other)]
                for layer, other in zip(energy.all_parameter_gradients(state, half),
                                        negative.all_parameter_gradients(negative_state, half))
            ]
        return Estimate.from_layers(network, per_layer, output, loss, state.targets, trace)


@dataclass
class PCNudge(PredictiveCoding):
    lam: float = 0.01
    name = "pc_nudge"
