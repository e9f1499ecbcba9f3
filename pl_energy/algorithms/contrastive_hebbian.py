"""``chl``: contrastive Hebbian learning (Movellan 1991; Xie & Seung 2003; Millidge et al. 2022 Eqs. 6, 7, 17).

Free phase to x_bar; clamped phase with the output fixed to the target (x_L - dL/dx_L, which is y
for ``mse``) to x_tilde; both on the layered Hopfield energy with feedback strength gamma
(layer l weighted gamma^(l-1)). To first order, the clamped perturbation reaches layer l scaled
by gamma^(L-l) and layer l's energy carries gamma^(l-1), so

    g = (dE/dtheta(x_tilde) - dE/dtheta(x_bar)) / gamma^(L-1)  ->  dL/dtheta  as gamma -> 0.

``corrected=True`` (Millidge et al. 2022 Eq. 16-17): the difference of weight gradients equals
H delta_x + R, with H = d^2 E / dx dtheta at x_bar, delta_x = x_tilde - x_bar and R the Taylor
remainder of order delta_x^2. The corrected update keeps the first-order term H delta_x,
computed exactly with a forward-mode JVP (torch.func), and so drops R.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from torch.func import jvp

from ..core.arithmetic import tf32_operations
from ..core.losses import Loss
from ..core.networks import layers_of
from .base import Estimate
from .contrastive import Contrast, Phase
from .hopfield_common import HopfieldAlgorithm, check_resolution, read_tolerance, warn_if_stalled_by_tf32


#: chl's clamped phase is read divided by gamma^(L-1): a rounding floor above this fraction of it
#: is warned about (float32, a 4-layer sigmoid MLP at gamma 0.1: 2.4 off; a 3-layer one: 1e-2).
RESOLVED_ROUNDING = 1e-2


@dataclass
class ContrastiveHebbian(HopfieldAlgorithm):
    """CHL on the Hopfield energy.

    Args:
        gamma: feedback strength; the update is scaled by gamma^-(L-1).
        corrected: keep only the first-order term of the phase difference (Millidge et al. 2022 Eq. 17).
        error_estimate: compute ``Estimate.error_bound`` (one VJP per layer; a JVP for chl).

    The inference settings (``solver``, ``steps``, ``step_size``, ``tol``, ``trace``) are
    ``HopfieldAlgorithm``'s: over-relaxed even/odd sweeps to a residual of 1e-6.

    With ``error_estimate`` (off by default: the first-order term costs a forward-mode JVP,
    +60 % of the time on Millidge et al. 2022's MLP), ``Estimate.error_bound`` is the embedded
    estimate of the pair (chl, corrected chl): per layer, the distance of the update from its
    first-order term, relative to that term, the size of the remainder R. Against chl's
    reference (implicit differentiation at the free equilibrium; float64, a 20-16-16-5 MLP, 3
    seeds, gamma 0.5 to 0.1, clip, sigmoid and tanh units) the worst layer's error was 1.0 to
    2.15 times the worst layer's estimate: the first-order term keeps chl's O(gamma) bias, which
    the estimate does not see, and in the lower layers, where R is small, the estimate can be
    orders of magnitude below their error (read the worst layer). It is an estimate, not a
    bound; corrected chl has none.
    """

    gamma: float = 0.1
    corrected: bool = False
    error_estimate: bool = False
    name = "chl"
    traced_phase = "the clamped phase (output clamped, L not in E)"
    supervised_weight = "0\N{MIDDLE DOT}"

    def nudge(self, network: nn.Module) -> float:
        """The clamped displacement reaches the first layer scaled by gamma^(L-1)."""
        return self.gamma ** (len(layers_of(network)) - 1)

    def phases(self, network: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss,
               record: bool) -> Contrast:
        """The clamped phase against the free phase, scaled by gamma^-(L-1). The estimate reads
        both divided by gamma^(L-1), so both relax to tol * gamma^(L-1) (``read_tolerance``): at
        tol alone, a 4-layer sigmoid MLP's first layer was 84 % off chl's own limit."""
        energy, free, first = self.free_phase(network, inputs, targets, loss)
        moved = self.gamma ** (len(energy.layers) - 1)
        tf32 = tf32_operations(network, free.output)
        check_resolution(self, tf32, moved, free,
                         f"chl's clamped phase (gamma={self.gamma:g} over {len(energy.layers)} layers)",
                         "use a larger gamma, fewer layers or float64 parameters", warned=RESOLVED_ROUNDING)
        tol = None if self.tol is None else min(self.tol, read_tolerance(self.tol, moved, free))
        reports = (first.report,)
        if tol is not None and tol < self.tol:
            reports += (self.relax(energy, free, tol=tol).report,)
        clamped = energy.clamped(free)
        relaxation = self.relax(energy, clamped, record, tol=tol)
        reports += (relaxation.report,)
        warn_if_stalled_by_tf32(tf32, reports)
        first_order = None
        if self.error_estimate and not self.corrected:  # the other half of the embedded pair
            first_order = self._first_order(energy, free, clamped, 1 / moved)
        return Contrast(Phase(energy, clamped), Phase(energy, free), 1 / moved, free.output, free.targets,
                        relaxation.trace, reports, limit=first_order)

    def compute(self, network: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss,
                record: bool) -> Estimate:
        """The contrast; ``corrected`` keeps its first-order term H delta_x instead."""
        if not self.corrected:
            return super().compute(network, inputs, targets, loss, record)
        run = self.phases(network, inputs, targets, loss, record)
        per_layer = self._first_order(run.low.energy, run.low.state, run.high.state, run.scale)
        return Estimate.from_layers(network, per_layer, run.output, loss, run.targets, run.trace, run.reports)

    @staticmethod
    def _first_order(energy, free, clamped, scale: float) -> list[list[Tensor]]:
        """scale * H delta_x per layer, the first-order term of the phase difference: a
        forward-mode JVP of the weight gradients at the free state along delta_x =
        x_clamped - x_free."""

        def weight_gradients(*activities: Tensor):
            state = energy.snapshot(free)
            state.activities[1:] = list(activities)
            return tuple(g for layer in energy.parameter_gradients(state) for g in layer)

        tangents = tuple(c - f for c, f in zip(clamped.activities[1:], free.activities[1:]))
        _, flat = jvp(weight_gradients, tuple(free.activities[1:]), tangents)
        flat = iter(flat)
        return [[next(flat) * scale for _ in layer.parameters()] for layer in energy.layers]
