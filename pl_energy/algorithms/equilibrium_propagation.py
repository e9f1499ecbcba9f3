"""``ep``: equilibrium propagation (Scellier & Bengio 2017; Millidge et al. 2022 Sec. 2.3, 3.4, Eqs. 9, 24).

Free phase to x_bar, nudged phase E + beta L to x_beta, both on the layered Hopfield energy:

    one-sided:  (dE/dtheta(x_beta) - dE/dtheta(x_bar)) / beta            error O(beta)
    centered:   (dE/dtheta(x_{+beta}) - dE/dtheta(x_{-beta})) / (2 beta)  error O(beta^2)

(Laborieux et al. 2021). Both tend to dL/dtheta at the free equilibrium as beta -> 0;
``reference`` gives that gradient exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..core.losses import Loss
from .contrastive import Contrast, Phase
from .hopfield_common import HopfieldAlgorithm


@dataclass
class EquilibriumPropagation(HopfieldAlgorithm):
    """EP on the Hopfield energy.

    Args:
        beta: nudging strength. The default, centered with beta = 0.5, is Laborieux et al.
            2021's remedy for one-sided EP's bias: on MNIST (784-512-10, Adam) it reaches 94.6%
            validation accuracy after one epoch; EP's error against its reference shrinks as
            beta (one-sided) or beta^2 (centered) until a nudge moves a unit across a kink of a
            clip/ReLU unit or a max-pool switch (``tests/test_hopfield_conv.py``).
        nudged_steps: step cap of the nudged phases (default: ``steps``).
        centered: nudge by +beta and -beta and take the symmetric difference.

    ``gamma`` and the inference settings (``solver``, ``steps``, ``step_size``, ``tol``,
    ``trace``) are ``HopfieldAlgorithm``'s.
    """

    beta: float = 0.5
    nudged_steps: int | None = None
    centered: bool = True
    name = "ep"
    traced_phase = "the nudged phase (+\N{GREEK SMALL LETTER BETA})"
    supervised_weight = "\N{GREEK SMALL LETTER BETA}"

    def nudge(self, network: nn.Module) -> float:
        return self.beta

    def __post_init__(self):
        super().__post_init__()
        if self.beta == 0:
            raise ValueError("beta must be non-zero")
        if self.nudged_steps is not None and self.nudged_steps < 1:
            raise ValueError(f"nudged_steps must be >= 1 (or None: steps), got {self.nudged_steps}")

    def phases(self, network: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss,
               record: bool) -> Contrast:
        """+beta against the free phase, or against -beta (centered)."""
        energy, free, first = self.free_phase(network, inputs, targets, loss)
        steps = self.steps if self.nudged_steps is None else self.nudged_steps
        nudged = energy.nudged(free, self.beta)
        relaxation = self.relax(energy, nudged, record, steps)
        reports = (first.report, relaxation.report)
        if self.centered:
            low = energy.nudged(free, -self.beta)
            reports += (self.relax(energy, low, steps=steps).report,)
            return Contrast(Phase(energy, nudged), Phase(energy, low), 1 / (2 * self.beta), free.output,
                            free.targets, relaxation.trace, reports)
        return Contrast(Phase(energy, nudged), Phase(energy, free), 1 / self.beta, free.output, free.targets,
                        relaxation.trace, reports)
