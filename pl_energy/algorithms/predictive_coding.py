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
steps; at pc_nudge's automatic nudge (one rounding unit) it converges at its first-order start,
at lam = 0.01 on tanh MLPs of depth 3-20 in 2 steps. For pc's strong nudge on trained deep
networks ``solver="newton"`` converges where the fixed-point iterations stall
(``pl_energy.core.newton``). On ReLU / max-pooling networks a phase that descent has not
solved in ``DESCENT_BEFORE_PIECES`` steps (the nudge moved units across their kinks, where
descent would only settle) is solved on its linear pieces (``pl_energy.core.active_set``,
``active_set=True``). The papers' dynamics are one
flag set away: ``solver="gd", steps=50, step_size=0.1, tol=None`` is Millidge et al. 2022's A.1 setting
(``PAPER_SETTINGS``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor, nn

from ..core.active_set import PIECE_TOLERANCE, ActiveSetResult, Pieces, has_pieces, solve_on_pieces
from ..core.compiled_steps import RUN_LENGTH, compilable
from ..core.inference import DivergenceError, InferenceReport, check_settings
from ..core.kinks import kinks_pinned
from ..core.losses import Loss
from ..core.networks import layers_of
from ..core.nudge import automatic_strength, finite_difference_step
from ..core.predictive_coding import PCState, PredictiveCodingEnergy
from ..core.solvers import ErrorDescent, solver_class
from .base import Estimate
from .contrastive import Contrast, ContrastiveAlgorithm, Phase
from .graph_estimate import graph_estimate
from .warnings import warn_if_not_converged


#: Descent steps before a phase on a ReLU / max-pooling network that has not converged is
#: solved on its linear pieces (``PredictiveCoding.relax_phase``).
DESCENT_BEFORE_PIECES = 5

#: The papers' inference settings (Song et al. 2020; Millidge et al. 2022, A.1).
PAPER_SETTINGS = {"solver": "gd", "steps": 50, "step_size": 0.1, "tol": None}


@dataclass
class PredictiveCoding(ContrastiveAlgorithm):
    """Inference learning / PC-Nudge on the predictive-coding energy.

    Args:
        lam: weight of the supervised term, E = I + lam L (1: the target clamps the output),
            or "auto", the finite-difference step of each batch (``nudge_strength``).
        gamma: precision ratio pi_{l+1}/pi_l in (0, 1] (feedback strength).
        centered: +lam and -lam phases, error O(lam^2).
        error_estimate: compute ``Estimate.error_bound`` (one VJP per layer; a JVP for chl).
        error_tolerance: warn when the worst layer's ``error_bound`` exceeds this (None: never).
        active_set: solve phases that settle on ReLU / max-pool kinks piece by piece
            (``core.active_set``).

    ``lam="auto"`` takes the lam whose first-order displacement of the hidden activities is a
    step h of their size for the sample and layer it moves most (``pl_energy.core.nudge``): with
    the error solvers, which carry the errors in difference form, one rounding unit (h = eps, the
    parameters' machine epsilon: the estimate is then the limit lam -> 0 to rounding, and
    inference converges at its first-order start); with the activity solvers (``gd``,
    ``nesterov``) h = eps^(1/2) (eps^(1/3) centered), the classical balance of bias and rounding.
    Units exactly on a kink of the free state (ReLU at 0, tied max-pooling entries) keep
    autograd's slope in the nudged phases (``pl_energy.core.kinks``), so the limit is backprop's
    gradient as autograd defines it, and a nudged phase has an equilibrium to converge to. ``Estimate.error_bound`` is the
    estimate's relative error per layer against the limit lam -> 0 (backprop's gradient, from
    the first-order response); ``EstimateErrorWarning`` says when its worst layer exceeds
    ``error_tolerance`` (None for pc: lam = 1 is not meant to be close to backprop).

    The inference settings (``solver``, ``steps``, ``step_size``, ``tol``, ``trace``) are
    ``RelaxingAlgorithm``'s, converged by default. With a tolerance, each nudged phase starts at
    its first-order equilibrium eps_l = lam r_l (where one error step at step 1 from the free
    state lands); without one (the papers' fixed-step dynamics) it starts at the free state.
    The error solver carries the errors in difference form (``PCState.carried``), so weak
    nudges stay exact in float32.
    """

    lam: float | str = 1.0
    gamma: float = 1.0
    centered: bool = False
    error_estimate: bool = True
    error_tolerance: float | None = None
    active_set: bool = True
    solver: str = "error"
    steps: int = 100
    tol: float | None = 1e-4
    name = "pc"
    traced_phase = "the clamped phase"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.lam, str) and self.lam != "auto":
            raise ValueError(f"{self.name}: lam must be a number or 'auto', got {self.lam!r}")
        if self.lam == 0:
            raise ValueError("lam must be non-zero: the update is (1/lam) dE/dtheta")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma (feedback strength) must lie in (0, 1], got {self.gamma}")

    @property
    def carried(self) -> bool:
        """Whether the solver carries the errors in difference form (the error solvers)."""
        return issubclass(solver_class(self.solver), ErrorDescent)

    def nudge(self, network: nn.Module) -> float | None:
        """The fixed lam, for the precision check; None for "auto" (chosen above rounding) and
        for the error solvers, whose errors are carried in difference form."""
        return None if self.lam == "auto" or self.carried else float(self.lam)

    def nudge_strength(self, energy: PredictiveCodingEnergy, free: PCState,
                       response: list[Tensor] | None) -> float:
        """lam for this batch: the fixed value, or the finite-difference step of ``lam="auto"``."""
        if self.lam != "auto":
            return float(self.lam)
        step = finite_difference_step(free.output.dtype, self.centered, self.carried)  # the input may be integers
        return automatic_strength(step, energy.displacement_per_unit(free, response))

    def relax_phase(self, network: nn.Module, energy: PredictiveCodingEnergy, state: PCState,
                    record: bool) -> tuple[object, InferenceReport]:
        """One nudged phase: descent to the tolerance; on a piecewise-linear network
        (``has_pieces``) descent stops after ``DESCENT_BEFORE_PIECES`` steps and, if it has not
        converged, the phase is solved on its linear pieces (``pl_energy.core.active_set``;
        settling across kinks would take a dozen more halved steps); if that solve runs out of
        rounds or its state fails the check (the residual with the real layers' values and the
        solved slopes above ``tol``), descent goes on from where it stopped. Returns the trace (of the first
        descent, followed by the solve's solution or the descent that went on) and the report."""
        solvable = self.active_set and self.tol is not None and has_pieces(network)
        steps = min(self.steps, DESCENT_BEFORE_PIECES) if solvable else self.steps
        relaxation = self.relax(energy, state, record, steps=steps, warn=False)
        report = relaxation.report
        if not solvable or report.converged:
            return relaxation.trace, report
        descended = energy.snapshot(state)
        result = self._solve_on_pieces(network, energy, state)
        if result is not None and result.consistent:
            report = dataclasses.replace(
                report, steps=report.steps + result.steps, converged=True, residual=result.residual,
                settled=False, pieces_changed=result.changed, units_on_kink=result.on_kink)
            trace = relaxation.trace and relaxation.trace.then(energy.components(state), report.steps, True)
            return trace, report
        energy.restore(state, descended)
        rest = self.relax(energy, state, record, steps=self.steps - report.steps, warn=False)
        report = dataclasses.replace(rest.report, steps=report.steps + rest.report.steps,
                                     pieces_changed=None if result is None else result.changed)
        trace = relaxation.trace and relaxation.trace.then(rest.trace, report.steps, report.converged)
        return trace, report

    def _solve_on_pieces(self, network: nn.Module, energy: PredictiveCodingEnergy,
                         state: PCState) -> ActiveSetResult | None:
        """The active-set solve of ``state`` (``core.active_set``), its pieces relaxed to
        ``PIECE_TOLERANCE`` of the phase's tolerance; None where the network's pieces are not
        the solve's (``Pieces.of``) or a relaxation diverged."""
        pieces = Pieces.of(network)
        if pieces is None:
            return None
        frozen = PredictiveCodingEnergy(network, energy.loss, energy.precisions, derivatives=pieces.derivatives)
        try:
            return solve_on_pieces(frozen, state, pieces, self.tol, lambda at: self.relax(
                frozen, at, tol=self.tol * PIECE_TOLERANCE, warn=False).report)
        except DivergenceError:
            return None

    def signs(self) -> tuple[int, ...]:
        """The signs of the nudged phases: +lam, then -lam when centered."""
        return (1, -1) if self.centered else (1,)

    def energy(self, network: nn.Module, loss: Loss) -> PredictiveCodingEnergy:
        """The PC energy with the precisions gamma^-(L-l) that make gamma the feedback strength."""
        depth = len(layers_of(network))
        precisions = [self.gamma ** -(depth - index) for index in range(1, depth)]
        return PredictiveCodingEnergy(network, loss, precisions=precisions)

    def compute(self, network: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss,
                record: bool) -> Estimate:
        """The contrast of the phases (``ContrastiveAlgorithm.compute``); compiled
        (``compile_inference``), the default and the papers' fixed steps run as one graph
        (``algorithms.graph_estimate``) where they can: flat inputs (the closed forms'), a
        hidden layer at least, every layer in closed form."""
        if self.compile_inference is not None and not record and inputs.dim() == 2 and self._graph_setting():
            check_settings(self.solver, self.steps, self.step_size, self.tol)  # as relax does, for settings changed since
            energy = self.energy(network, loss)
            if len(energy.layers) > 1 and compilable(energy, solver_class(self.solver)()):
                estimate = graph_estimate(self, network, energy, inputs, targets, loss)
                if estimate is not None:
                    return estimate
        return super().compute(network, inputs, targets, loss, record)

    def _graph_setting(self) -> bool:
        """Whether no phase needs a host read before it ends: the default (the automatic nudge,
        one rounding unit, with the error solver and a tolerance: the phases stop at their
        first-order start) or fixed steps at a fixed lam (no tolerance, no back-off, at most
        ``RUN_LENGTH`` steps: the graph unrolls them)."""
        solver = solver_class(self.solver)
        if self.tol is not None:
            return self.lam == "auto" and solver is ErrorDescent
        return self.lam != "auto" and self.step_size != "auto" and 1 <= self.steps <= RUN_LENGTH and solver.compiles

    def phases(self, network: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss,
               record: bool) -> Contrast:
        """One phase per sign (``signs``) from one feedforward pass, the first traced; a single
        phase is contrasted with the free phase (whose weight gradient is zero)."""
        energy = self.energy(network, loss)
        with kinks_pinned(network) as kinks:
            free = energy.free_state(inputs, targets)
            kinks.fix()
            return self._nudged_phases(network, energy, free, record)

    def _nudged_phases(self, network: nn.Module, energy: PredictiveCodingEnergy, free: PCState,
                       record: bool) -> Contrast:
        # the response picks "auto"'s lam, starts converged phases and gives the error's limit;
        # the papers' fixed-step runs at a fixed lam without the error need none of it
        needed = self.lam == "auto" or self.tol is not None or self.error_estimate
        response = energy.first_order_response(free) if needed else None
        lam = self.nudge_strength(energy, free, response)
        start = response if self.tol is not None else None
        phases, reports, trace = {}, (), None
        for sign in self.signs():
            state = energy.nudged(free, sign * lam, start)
            phase_trace, report = self.relax_phase(network, energy, state, record and not reports)
            warn_if_not_converged(report, stacklevel=4)
            phases[sign], reports = Phase(energy, state), reports + (report,)
            trace = phase_trace if trace is None else trace
        scale = 1 / (len(phases) * lam)
        limit = energy.response_parameter_gradients(free, response) if self.error_estimate else None
        return Contrast(phases.get(1), phases.get(-1), scale, free.output, free.targets, trace, reports,
                        lam, limit)


@dataclass
class PCNudge(PredictiveCoding):
    """PC-Nudge: predictive coding with a weak supervised nudge (Millidge et al. 2022, Sec. 4).

    Args:
        lam: weight of the supervised term, E = I + lam L (1: the target clamps the output),
            or "auto", the finite-difference step of each batch (``nudge_strength``).
        error_tolerance: warn when the worst layer's ``error_bound`` exceeds this (None: never).

    The update approaches BP's as lam -> 0; "auto" (the default) takes the finite-difference
    step of each batch, the paper's is ``lam=0.01``. ``gamma``, ``centered``,
    ``error_estimate`` and the inference settings are ``PredictiveCoding``'s.
    """

    lam: float | str = "auto"
    error_tolerance: float | None = 0.05
    name = "pc_nudge"
    traced_phase = "the nudged phase"
