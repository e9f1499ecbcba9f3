"""``pc`` (inference learning) and ``pc_nudge``: PC inference to equilibrium, then one update.

Both minimise E = I + lam L (Millidge et al. 2022 Eq. 10) from the free equilibrium (the feedforward pass)
and return (1/lam) dE/dtheta at the clamped/nudged equilibrium (Millidge et al. 2022 Eq. 21; the PC free-phase
weight gradient is zero, Eq. 20). ``centered`` runs a +lam and a -lam phase and returns
(dE^{+lam}/dtheta - dE^{-lam}/dtheta) / (2 lam), whose error is O(lam^2) instead of O(lam).

- ``pc`` (Whittington & Bogacz 2017; Song et al. 2020 Alg. 1): lam = 1, the target clamps the output;
  BP is approached in the weak-feedback limit: ``gamma`` < 1 sets the precision ratio
  pi_{l+1}/pi_l = gamma at every layer (Millidge et al. 2022 Eq. 18), i.e. pi_l = gamma^-(L-l).
- ``pc_nudge`` (Millidge et al. 2022 Sec. 4, Eq. 25, Alg. A.1.3): lam = 0.01; BP is approached in the
  weak-supervision limit lam -> 0. The (1/lam) rescaling is the paper's learning rate eta/lam.

Both are defined at the equilibrium, and by default find it: ``solver="error"`` (descent on the
prediction errors, Goemaere et al. 2025) to a relative residual of ``tol = 1e-4``, capped at 100
steps; on tanh MLPs of depth 3-20 that takes 2 steps for pc_nudge. The papers' dynamics are one
flag set away: ``solver="gd", steps=50, step_size=0.1, tol=None`` is Millidge et al. 2022's A.1 setting
(``PAPER_SETTINGS``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..core.losses import Loss
from ..core.networks import layers_of
from ..core.predictive_coding import PredictiveCodingEnergy
from .contrastive import Contrast, ContrastiveAlgorithm, Phase


#: The papers' inference settings (Song et al. 2020; Millidge et al. 2022, A.1).
PAPER_SETTINGS = {"solver": "gd", "steps": 50, "step_size": 0.1, "tol": None}


@dataclass
class PredictiveCoding(ContrastiveAlgorithm):
    """Inference learning / PC-Nudge on the predictive-coding energy.

    Args:
        lam: weight of the supervised term, E = I + lam L (1: the target clamps the output).
        gamma: precision ratio pi_{l+1}/pi_l in (0, 1] (feedback strength).
        centered: +lam and -lam phases, error O(lam^2).

    The inference settings (``solver``, ``steps``, ``step_size``, ``tol``, ``trace``) are
    ``RelaxingAlgorithm``'s, converged by default.
    """

    lam: float = 1.0
    gamma: float = 1.0
    centered: bool = False
    solver: str = "error"
    steps: int = 100
    tol: float | None = 1e-4
    name = "pc"
    traced_phase = "the clamped phase"

    def __post_init__(self):
        super().__post_init__()
        if self.lam == 0:
            raise ValueError("lam must be non-zero: the update is (1/lam) dE/dtheta")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma (feedback strength) must lie in (0, 1], got {self.gamma}")

    def nudge(self, network: nn.Module) -> float:
        return self.lam

    def energy(self, network: nn.Module, loss: Loss) -> PredictiveCodingEnergy:
        """The PC energy with the precisions gamma^-(L-l) that make gamma the feedback strength."""
        depth = len(layers_of(network))
        precisions = [self.gamma ** -(depth - index) for index in range(1, depth)]
        return PredictiveCodingEnergy(network, loss, precisions=precisions)

    def phases(self, network: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss,
               record: bool) -> Contrast:
        """+lam against the free phase (whose weight gradient is zero), or against -lam; both
        nudged phases start from one feedforward pass."""
        energy = self.energy(network, loss)
        free = energy.free_state(inputs, targets)
        positive = energy.nudged(free, self.lam)
        relaxation = self.relax(energy, positive, record)
        reports = (relaxation.report,)
        if not self.centered:
            return Contrast(Phase(energy, positive), None, 1 / self.lam, free.output, free.targets,
                            relaxation.trace, reports)
        negative = energy.nudged(free, -self.lam)
        low = self.relax(energy, negative)
        return Contrast(Phase(energy, positive), Phase(energy, negative), 1 / (2 * self.lam), free.output,
                        free.targets, relaxation.trace, reports + (low.report,))


@dataclass
class PCNudge(PredictiveCoding):
    """PC-Nudge: predictive coding with a weak supervised nudge (Millidge et al. 2022, Sec. 4).

    Args:
        lam: weight of the supervised term, E = I + lam L; the update approaches BP's as lam -> 0.

    ``gamma``, ``centered`` and the inference settings are ``PredictiveCoding``'s.
    """

    lam: float = 0.01
    name = "pc_nudge"
    traced_phase = "the nudged phase"
