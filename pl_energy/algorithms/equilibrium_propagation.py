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

from ..core.arithmetic import tf32_operations
from ..core.hopfield import HopfieldState
from ..core.losses import Loss
from ..core.nudge import automatic_strength, finite_difference_step
from .contrastive import Contrast, Phase, contrast
from .hopfield_common import (REFUSED_ROUNDING, HopfieldAlgorithm, check_resolution, read_tolerance,
                              warn_if_stalled_by_tf32)


@dataclass
class EquilibriumPropagation(HopfieldAlgorithm):
    """EP on the Hopfield energy.

    Args:
        beta: nudging strength. The default, centered with beta = 0.5, is Laborieux et al.
            2021's remedy for one-sided EP's bias: on MNIST (784-512-10, Adam) it reaches 94.6%
            validation accuracy after one epoch; EP's error against its reference shrinks as
            beta (one-sided) or beta^2 (centered) until a nudge moves a unit across a kink of a
            clip/ReLU unit or a max-pool switch (``tests/test_hopfield_conv.py``). "auto": the
            finite-difference step of each batch (``nudge_strength``).
        nudged_steps: step cap of the nudged phases (default: ``steps``).
        centered: nudge by +beta and -beta and take the symmetric difference.
        error_estimate: compute ``Estimate.error_bound`` (one VJP per layer; a JVP for chl).

    ``gamma`` and the inference settings (``solver``, ``steps``, ``step_size``, ``tol``,
    ``trace``) are ``HopfieldAlgorithm``'s. Tolerances follow the nudge (``tolerances``): a
    nudged phase's residual is measured against what the nudge changed (``core.solvers``) and
    must reach ``tol`` times the nudge's relative displacement h (when h < 1), so that stopping
    early stays below the O(beta^2) bias of the centered estimate; the one-sided estimate, which
    reads dE/dtheta at the free state, first relaxes the free phase on as far (its error enters
    the estimate divided by h). Neither goes below the dtype's rounding floor. In float64,
    centered EP at the defaults follows O(beta^2) down to beta = 1e-4 (``tests/test_nudge.py``).
    The -beta phase starts at the mirror image of the +beta equilibrium (``mirrored``).

    Centered, ``Estimate.error_bound`` is the embedded error estimate of the pair (as an
    embedded Runge-Kutta pair estimates its step's error): per layer, the distance of the
    centered estimate from the one-sided one read off the same +beta and free phases, relative
    to the one-sided one (one more parameter VJP: 5-7 % of the time on Millidge et al. 2022's
    MLP; ``error_estimate=False`` leaves it out). The one-sided update reads the free phase
    divided by h, so that phase relaxes on to tol * h first, as one-sided EP's does (at tol
    alone, a float64 tanh MLP at beta = "auto" read 1.18 where the error was 4e-5: the free
    phase's residual over h). It is the one-sided estimate's error to first order; the centered
    one's is of its order where the nudge moves units across kinks or pool switches, and below
    it on smooth energies. Against EP's reference in float64 (worst
    layers; ``tests/test_nudge.py``, ``benchmarks/RESULTS.md``): on a 20-16-16-5 MLP over 4 seeds,
    beta 0.5 to 0.01 and clip, ReLU, tanh and sigmoid units, the error was at most 1.5 times it
    (kinked units), 0.001 to 0.7 of it with smooth units; on Millidge et al. 2022's MLP with clip
    units it was 1.13 / 0.24 / 0.043 where the error is 0.30 / 0.11 / 0.039 (beta = 0.5 / 0.1 /
    0.01); on VGG-5 at 1/8 width with clip units and max-pooling 0.94 / 92.6 / 0.42 for 3.6 / 92.3
    / 9e-3 (beta = 0.5 / 0.01 / 1e-4). It is an estimate, not a bound, and it is logged
    (``estimate/worst_error``), not warned about: no ``error_tolerance``.
    """

    beta: float | str = 0.5
    nudged_steps: int | None = None
    centered: bool = True
    error_estimate: bool = True
    name = "ep"
    traced_phase = "the nudged phase (+\N{GREEK SMALL LETTER BETA})"
    supervised_weight = "\N{GREEK SMALL LETTER BETA}"

    def nudge(self, network: nn.Module) -> float | None:
        return None if self.beta == "auto" else float(self.beta)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.beta, str) and self.beta != "auto":
            raise ValueError(f"ep: beta must be a number or 'auto', got {self.beta!r}")
        if self.beta == 0:
            raise ValueError("beta must be non-zero")
        if self.nudged_steps is not None and self.nudged_steps < 1:
            raise ValueError(f"nudged_steps must be >= 1 (or None: steps), got {self.nudged_steps}")

    def nudge_strength(self, free: HopfieldState, per_unit: float) -> float:
        """beta for this batch: the fixed value, or for "auto" the beta that moves the output
        by eps^(1/2) of its size at first order (eps^(1/3) centered; ``pl_energy.core.nudge``),
        ``per_unit`` being the energy's ``displacement_per_unit`` at the free state."""
        if self.beta != "auto":
            return float(self.beta)
        return automatic_strength(finite_difference_step(free.output.dtype, self.centered), per_unit)

    def tolerances(self, tf32: tuple[str, ...], free: HopfieldState, beta: float,
                   per_unit: float) -> tuple[float, float] | None:
        """(nudged, free) tolerances for a nudge that moves the state by h = |beta| * per_unit
        (the energy's ``displacement_per_unit``) of its size: a nudged phase's residual, measured against what
        the nudge changed, must reach tol * min(1, h); the one-sided estimate's free phase,
        measured against the O(1) state and read divided by h, tol * min(1, h) as well. Neither
        goes below the rounding floor of O(1) states (``ROUNDING_EPSILONS`` machine epsilons,
        which against the nudge's move is that over h). A nudge whose floor is above
        ``REFUSED_ROUNDING`` (rounding that large a part of the estimate), in the arithmetic
        the layers run in (``tf32``: the operations a GPU runs in TF32, ``check_resolution``), is
        refused unless
        ``allow_imprecise``. None without a tolerance."""
        moved = abs(beta) * per_unit
        larger = ("use a larger beta or float64 parameters" if self.beta == "auto"
                  else "use a larger beta, beta='auto' or float64 parameters")
        floor = check_resolution(self, tf32, moved, free, f"ep's nudge beta={beta:.3g}", larger,
                                 warned=REFUSED_ROUNDING)
        if self.tol is None:
            return None
        return min(max(self.tol * min(1.0, moved), floor), REFUSED_ROUNDING), read_tolerance(self.tol, moved, free)

    def phases(self, network: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss,
               record: bool) -> Contrast:
        """+beta against the free phase, or against -beta (centered)."""
        energy, free, first = self.free_phase(network, inputs, targets, loss)
        per_unit = energy.displacement_per_unit(free)
        beta = self.nudge_strength(free, per_unit)
        tf32 = tf32_operations(network, free.output)
        tol, free_tol = self.tolerances(tf32, free, beta, per_unit) or (None, None)
        reports = (first.report,)
        read_alone = not self.centered or self.error_estimate  # the one-sided update reads it divided by beta
        if read_alone and free_tol is not None and free_tol < self.tol:
            reports += (self.relax(energy, free, tol=free_tol).report,)
        steps = self.steps if self.nudged_steps is None else self.nudged_steps
        nudged = energy.nudged(free, beta)
        relaxation = self.relax(energy, nudged, record, steps, tol, measured_from=energy.nudged(free, beta))
        reports += (relaxation.report,)
        if self.centered:  # -beta from the mirror image of the +beta equilibrium (first order)
            low = energy.mirrored(nudged, free, -beta)
            reports += (self.relax(energy, low, steps=steps, tol=tol, measured_from=energy.nudged(free, -beta)).report,)
            other, scale = Phase(energy, low), 1 / (2 * beta)
            one_sided = contrast(Phase(energy, nudged), Phase(energy, free), 1 / beta) if self.error_estimate else None
        else:
            other, scale, one_sided = Phase(energy, free), 1 / beta, None
        warn_if_stalled_by_tf32(tf32, reports)
        return Contrast(Phase(energy, nudged), other, scale, free.output, free.targets, relaxation.trace, reports, beta,
                        one_sided)
