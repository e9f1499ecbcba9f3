"""The contrastive estimate of which pc, pc_nudge, ep and chl are configurations.

Millidge et al. 2022 put PC, EP and CHL in one frame: relax an energy in two phases that differ
by a nudge of the output, and read the weight update off the difference of the energy's
parameter gradients at the two equilibria (their Eqs. 6-7, 9, 21):

    g = scale * ( dE_high/dtheta (x_high) - dE_low/dtheta (x_low) ).

An algorithm of the family says only which phases it relaxes (``ContrastiveAlgorithm.phases``):

| algorithm | high phase | low phase | scale |
|---|---|---|---|
| pc, pc_nudge | E + lam L | none (the free phase: dE/dtheta = 0, Eq. 20) | 1 / lam |
| pc, pc_nudge centered | E + lam L | E - lam L | 1 / (2 lam) |
| ep | E + beta L | the free phase | 1 / beta |
| ep centered (Laborieux et al. 2021) | E + beta L | E - beta L | 1 / (2 beta) |
| chl | output clamped to the target | the free phase | gamma^-(L-1) |

Every energy carries the nudge in its state (``energy.nudged(state, strength)``: lam for PC,
beta for the Hopfield energy), so both nudged phases start from one free state. A phase that is
``None`` contributes no weight gradient. When both phases are states of one
energy that can contrast them in one pass (``parameter_gradient_difference``: the Hopfield
energy stacks them along the batch), that speed path is taken; it gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..core.inference import InferenceReport
from ..core.losses import Loss
from ..core.trace import InferenceTrace
from .base import Estimate, RelaxingAlgorithm
from .gradients import layer_relative_errors


@dataclass(frozen=True)
class Phase:
    """An equilibrium of an energy: the state inference left, and the energy it minimised."""

    energy: Any
    state: Any


@dataclass(frozen=True)
class Contrast:
    """What an algorithm's phases give the estimate: the two phases and the scale of their
    difference, the free-phase output and targets, the trace of the traced phase and a report
    per relaxed phase; the nudge strength used (None where there is none) and, where the
    algorithm computes it, an update per layer against which the estimate's own error is
    measured (``Estimate.error_bound``): the limit of a vanishing nudge (PC: the linear response
    at the free equilibrium), or the other half of an embedded pair (centered EP: the one-sided
    estimate from the same phases; chl: its first-order term)."""

    high: Phase | None
    low: Phase | None
    scale: float
    output: Tensor
    targets: Tensor
    trace: InferenceTrace | None
    reports: tuple[InferenceReport, ...]
    nudge: float | None = None
    limit: list[list[Tensor]] | None = None


def contrast(high: Phase | None, low: Phase | None, scale: float) -> list[list[Tensor]]:
    """``scale * (dE_high/dtheta(x_high) - dE_low/dtheta(x_low))`` per layer, in
    ``layer.parameters()`` order; a ``None`` phase contributes nothing."""
    if high is None and low is None:
        raise ValueError("a contrast needs at least one phase")
    if high is not None and low is not None and high.energy is low.energy and hasattr(
            high.energy, "parameter_gradient_difference"):
        return high.energy.parameter_gradient_difference(high.state, low.state, scale)
    if low is None:
        return high.energy.parameter_gradients(high.state, scale=scale)
    if high is None:
        return low.energy.parameter_gradients(low.state, scale=-scale)
    return [[g - h for g, h in zip(upper, lower)]
            for upper, lower in zip(high.energy.parameter_gradients(high.state, scale=scale),
                                    low.energy.parameter_gradients(low.state, scale=scale))]


@dataclass
class ContrastiveAlgorithm(RelaxingAlgorithm):
    """An algorithm whose update is a contrast of two relaxed phases (see the module docstring).

    A subclass implements ``phases``; ``compute`` is the same for all. Its inference settings
    are ``RelaxingAlgorithm``'s.
    """

    def phases(self, network: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss,
               record: bool) -> Contrast:
        """Relax this algorithm's phases on the batch (the traced one recorded if ``record``)."""
        raise NotImplementedError

    def compute(self, network: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss,
                record: bool) -> Estimate:
        run = self.phases(network, inputs, targets, loss, record)
        per_layer = contrast(run.high, run.low, run.scale)
        error = None if run.limit is None else layer_relative_errors(network, per_layer, run.limit)
        return Estimate.from_layers(network, per_layer, run.output, loss, run.targets, run.trace, run.reports,
                                    nudge=run.nudge, error_bound=error)
