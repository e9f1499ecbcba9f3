"""Inference: relax an energy towards its equilibrium with a solver (Millidge et al. 2022, Eq. 1).

``relax`` runs a solver (``pl_energy.core.solvers``) for at most ``steps`` steps, in place on the
state, and watches it:

- Convergence. With ``tol`` set it stops once the relative residual
  max_l ||dE/dv_l|| / (||a_l|| + ||dE/dv_l - a_l||) is at most ``tol`` (see ``solvers``): the
  report then says ``converged``. A solver that damps its own step also stops once its moves
  are at most ``tol`` (relative) while the residual is not: the report says ``settled``, not
  converged. The final residual is always measured, in the plain coordinates of the state that
  is returned, and reported, also for a fixed number of steps. With ``measured_from`` (a state
  of the same energy, e.g. the free equilibrium under this phase's nudge) it is measured against
  the change since that state (``solvers``: a nudged phase's tolerance is then a fraction of the
  nudge's displacement, wherever the phase starts).
- Divergence. Descent on a smooth energy does not raise it. The energy is watched every step when
  the trace is recorded, else every ``check_every`` steps of the solver and at the last step; a
  value above the running minimum by more than the solver's ``rise_tolerance`` times the descent
  achieved so far (plus a rounding allowance), or a non-finite value, is divergence. Fixed steps
  then raise ``DivergenceError`` naming the first bad step and the step size; with
  ``step_size="auto"`` (and for adaptive solvers) the state goes back to the last good check,
  the step is halved and inference goes on, and the report counts the back-offs. No state from a
  diverging phase is ever returned quietly.
- Host reads. Fixed steps that nobody watches (no tolerance, ``on_step`` or back-off) keep the
  watched energies on the device and read them once, at the end (a divergence found there is
  named as above, by a replay with a trace); otherwise the energy is read at the check stride
  and the residual at most that far apart, sooner where the rate at which it fell between the
  last two checks says the tolerance is reached (``_Phase.next_check``). Each step's own work
  (``core.solvers``: ``measure``, ``advance``, ``step``) reads nothing back, so that
  ``compile=`` runs it as compiled graphs (``core.compiled_steps``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import solvers
from .compiled_steps import StepFunctions, step_functions
from .energy import Energy
from .solvers import Iteration, Solver, relative_residual, solver_class
from .trace import InferenceTrace

ROUNDING_ALLOWANCE = 64  # machine epsilons of |E| that a watched energy may rise by rounding
SMALLEST_STEP_FRACTION = 2.0 ** -40  # adaptive back-off gives up below this fraction of the start


class DivergenceError(FloatingPointError):
    """Inference raised the energy or made it non-finite."""


@dataclass
class InferenceReport:
    """How one inference phase ended.

    Attributes:
        solver: the solver's name.
        steps: steps that led to the returned state (steps undone by a back-off not counted).
        converged: the residual reached ``tol`` (always False without a tolerance).
        residual: the relative residual at the returned state (0 at an equilibrium).
        step_size: the step size at the end (smaller than the start after back-offs or damping).
        backoffs: how often the step was halved after the energy rose.
        tol: the tolerance asked for, if any.
        settled: the solver stopped because its damped steps no longer moved the state although
            the residual stayed above ``tol`` (``converged`` is then False). This is what happens
            at equilibria on the kinks of ReLU or max-pool networks, where the residual cannot
            vanish; it can also happen short of equilibrium, so it is reported, not trusted.
        pieces_changed: where an active-set solve ran after descent had not converged in its
            first steps (``core.active_set``), the side changes of ReLU units and pooling winners
            over its rounds; else None.
        units_on_kink: where an active-set solve converged, the units it solved on their kink
            (a fractional slope: ``core.active_set``); else None.
    """

    solver: str
    steps: int
    converged: bool
    residual: float
    step_size: float
    backoffs: int = 0
    tol: float | None = None
    settled: bool = False
    pieces_changed: int | None = None
    units_on_kink: int | None = None


@dataclass
class Relaxation:
    """The result of ``relax``: the report, and the trace when it was recorded."""

    report: InferenceReport
    trace: InferenceTrace | None = None


def check_settings(solver: str, steps: int, step_size: float | str | None, tol: float | None) -> None:
    """Refuse settings no solver can run with, in one line that says what to use instead."""
    solver_class(solver)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if isinstance(step_size, str):
        if step_size != "auto":
            raise ValueError(f"step_size must be a positive number or 'auto', got {step_size!r}")
    elif step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be > 0 and finite (or 'auto'), got {step_size}")
    if tol is not None and not (math.isfinite(tol) and 0 < tol < 1):
        raise ValueError(f"tol is a relative residual and must lie in (0, 1), got {tol}")


def relax(
    energy: Energy,
    state: Any,
    steps: int,
    step_size: float | str | None = None,
    tol: float | None = None,
    record: bool = False,
    solver: str | Solver = "gd",
    on_step: Callable[[int, object], None] | None = None,
    measured_from: Any | None = None,
    compile: dict[str, Any] | None = None,
) -> Relaxation:
    """Relax ``state`` in place for at most ``steps`` steps of ``solver``.

    Fixed steps that nobody watches (no ``tol``, ``on_step`` or back-off) run as a plain loop,
    the rest as a watched loop (see ``_Phase``).

    Args:
        energy: the energy (``pl_energy.core.Energy``).
        state: its state, e.g. from ``energy.free_state(inputs, targets)``; changed in place.
        steps: the step cap (the exact number of steps when ``tol`` is None).
        step_size: the solver's step; None for its default, "auto" to back off on rises.
        tol: stop once the relative residual is at most this.
        record: keep the energy components of every step in the returned trace.
        solver: a name of ``SOLVERS`` ("gd", "nesterov"; "error", "anderson", "newton" for
            predictive-coding energies; "sweep", "adaptive_sweep" for Hopfield energies), or a
            ``Solver``.
        on_step: called as ``on_step(step, state)`` at the start (step 0) and after every step,
            to watch the dynamics (it must not change the state). Fixed-step descent then
            runs in the plain coordinates, never in faster ones of the same dynamics
            (``core.reduced_input``), so that the watched state is always in its plain form.
        measured_from: measure the residual against what changed since this state (its
            gradients and local terms), for a phase nudged off an equilibrium.
        compile: run the solver's steps compiled by ``torch.compile`` with these options
            (``core.compiled_steps``; ``{}`` for the defaults) where the energy's steps trace
            as whole graphs (``compiled_steps.compilable``); None: eagerly.
    """
    name = solver if isinstance(solver, str) else solver.name
    check_settings(name, steps, step_size, tol)
    solver = solver_class(solver)() if isinstance(solver, str) else solver
    phase = _Phase(energy, state, solver, step_size, record, step_functions(compile, energy, solver))
    if tol is None and on_step is None and not phase.adaptive:
        return phase.plain_loop(steps)
    return phase.watched_loop(steps, tol, on_step, measured_from)


def first_step(solver: Solver | type[Solver], step_size: float | str | None) -> float:
    """The step size a phase starts with: the solver's default for None and "auto"."""
    return solver.default_step if step_size in (None, "auto") else float(step_size)


class _Phase:
    """One inference phase: what both loops share, the loops, and the report.

    - ``plain_loop``: fixed steps, possibly in faster coordinates of the same dynamics
      (``Solver.faster_coordinates``). Nothing is read back while it runs: the watched energies
      (every ``check_every`` steps of the solver, every step with a trace, and the last) stay on
      the device and are read once at the end, where divergence is named as the watched loop
      would have named it; the residual is measured once, at the returned state.
    - ``watched_loop``: a tolerance, ``on_step`` or back-offs. The residual is read at most
      the check stride apart (``next_check``; every step for a rule that reads it before every
      move, ``needs_residual``, whose damping itself stays on the device), the energy at the
      stride, and a rise goes back to the last good check with half the step, without replaying.
    - ``report``: the ``InferenceReport`` (and trace) of the returned state.
    """

    def __init__(self, energy: Energy, state: Any, solver: Solver, step_size: float | str | None,
                 record: bool, functions: StepFunctions):
        self.energy, self.state, self.solver, self.record = energy, state, solver, record
        self.functions = functions
        self.plain = solver.coordinates(energy)
        self.adaptive = solver.adaptive or step_size == "auto"
        self.first_step = first_step(solver, step_size)
        self.every = 1 if record else solver.check_every
        self.start = energy.snapshot(state)
        self.watch: EnergyWatch | None = None  # from the first move on (``start_watch``)
        self.rows: list[tuple[Tensor, Tensor, Tensor]] = []
        self.tensor_step = functions.compiled  # a compiled graph takes its step size as an input
        self.like: Tensor | None = None  # a tensor of the energy's dtype and device (``start_watch``)

    def start_watch(self) -> None:
        """Read the starting energy, before the first move (a phase that stops where it starts,
        as a converged nudged phase of pc_nudge does, skips it), the first row of a trace."""
        if self.record:
            first = self.energy.components(self.state)
            self.rows.append(first)
            total = first[2]
        else:
            total = self.plain.total(self.state)
        self.watch = EnergyWatch(float(total), self.solver.rise_tolerance, total.dtype)
        if not math.isfinite(self.watch.start):
            raise DivergenceError(
                f"the energy is {self.watch.start} before inference starts: the inputs, targets or "
                "network parameters contain NaN or Inf")
        self.like = total

    def step_size(self, iteration: Iteration) -> float | Tensor:
        """The first step size (after ``start_watch``): a 0-dim tensor of the energy's dtype
        and device for compiled steps and for rules that change it on the device, else a number."""
        if self.tensor_step or iteration.needs_residual:
            return torch.tensor(self.first_step, dtype=self.like.dtype, device=self.like.device)
        return self.first_step

    def plain_loop(self, steps: int) -> Relaxation:
        """``steps`` fixed steps; the watched energies read once, at the end."""
        energy, state, solver = self.energy, self.state, self.solver
        self.start_watch()
        coordinates = solver.fixed_step_coordinates(energy, state, steps)
        iteration = solver.start()
        eta = self.step_size(iteration)
        # runs of a multiple of the watch stride, so that each run watches the phase's steps
        length = max(steps, 1) if self.functions.run_length is None else self.every * max(
            1, self.functions.run_length // self.every)
        rows: list[tuple[Tensor, Tensor, Tensor]] = []
        totals: list[Tensor] = []
        try:
            for first in range(0, steps, length):
                eta, more = self.functions.run(coordinates, iteration, state, eta, min(length, steps - first),
                                               self.every)
                # taken out of a compiled run's outputs before its next call (which, under CUDA
                # graphs, writes its outputs where the last call's were)
                totals.append(torch.stack([row[2] for row in more]))
                if self.record:
                    rows += [tuple(column.clone() for column in row) for row in more] if self.tensor_step else more
            values = torch.cat(totals).tolist() if totals else []  # the one host read
        finally:
            coordinates.leave(state)
        good_step = 0
        watched = [taken for taken in range(1, steps + 1) if taken % self.every == 0 or taken == steps]
        for index, (taken, value) in enumerate(zip(watched, values)):
            problem = self.watch.problem(value)
            if problem is not None:
                raise self.divergence(problem, taken, float(eta), good_step)
            good_step = taken
            if self.record:
                self.rows.append(rows[index])
        return self.report(steps, False, None, eta)

    def watched_loop(self, steps: int, tol: float | None,
                     on_step: Callable[[int, object], None] | None, measured_from: Any | None) -> Relaxation:
        """At most ``steps`` steps in the plain coordinates, stopped by ``tol``, backing off on
        rises when adaptive."""
        energy, state, solver, functions = self.energy, self.state, self.solver, self.functions
        coordinates = self.plain
        iteration = solver.start()
        origin = None if measured_from is None else (
            coordinates.gradients(measured_from), coordinates.local_terms(measured_from))
        if self.record:
            self.start_watch()
        eta = self.first_step if self.watch is None else self.step_size(iteration)
        taken, kept, backoffs = 0, 0, 0  # kept: the steps behind the current state
        converged = settled = False
        residual = None
        next_check, last_check = 0, None  # (step, residual) of the last check
        good, good_step, good_kept = self.start, 0, 0
        if on_step is not None:
            on_step(0, state)
        while True:
            # the residual: at the end and every `every` steps when a tolerance asks for it (every
            # step for rules that read it before each move: the damping, on the device, then the check)
            check = taken >= steps or (tol is not None and (iteration.needs_residual or taken >= next_check))
            if check or iteration.needs_residual:
                gradients, balance = functions.measure(coordinates, state, origin)
                if balance is None:  # no free layer: the state is its own equilibrium
                    residual, converged = 0.0, tol is not None
                    break
            else:
                gradients, balance = coordinates.moving_gradients(state), None
            if check:
                residual = balance.residual
                if tol is not None:
                    least = solver.min_steps(len(gradients))
                    if taken >= least or residual == 0:
                        converged = residual <= tol
                        settled = not converged and iteration.settled(eta, balance, tol)
                        if converged or settled:
                            break
                    next_check = self.next_check(taken, residual, last_check, tol, least)
                    last_check = (taken, residual)
            if taken >= steps:
                break
            if self.watch is None:
                self.start_watch()
                eta = self.step_size(iteration)
            eta = functions.advance(coordinates, iteration, state, gradients, balance, eta)
            taken, kept = taken + 1, kept + 1
            if on_step is not None:
                on_step(kept, state)
            if not (self.record or taken % self.every == 0 or taken == steps):
                continue
            row = coordinates.components(state) if self.record else None
            problem = self.watch.problem(float(coordinates.total(state) if row is None else row[2]))
            if problem is None:
                if self.record:
                    self.rows.append(row)
                good, good_step, good_kept = energy.snapshot(state), taken, kept
                continue
            if not self.adaptive or self.watch.unbounded:  # no step size finds a minimum that is not there
                raise self.divergence(problem, taken, float(eta), good_step)
            energy.restore(state, good)
            kept = good_kept
            if on_step is not None:
                on_step(kept, state)
            eta, backoffs = eta / 2, backoffs + 1
            iteration.reset()
            next_check, last_check = taken, None  # the restored state is checked before it moves
            if eta < self.first_step * SMALLEST_STEP_FRACTION:
                raise DivergenceError(
                    f"inference found no step that lowers the energy (step_size fell to {float(eta):g} "
                    f"after {backoffs} back-offs at step {taken}); check the inputs and the network "
                    "for NaN/Inf or extreme values")
        if self.watch is None:  # no move: the start is returned, and its energy is checked if in doubt
            if residual is None or not math.isfinite(residual):
                self.start_watch()
            return self.report(kept, converged, residual, eta, backoffs, tol, settled, origin)
        if taken != good_step:  # stopped between two watches: the returned state is watched too
            problem = self.watch.problem(float(coordinates.total(state)))
            if problem is not None and not self.adaptive:
                raise self.divergence(problem, taken, float(eta), good_step)
            if problem is not None:  # back to the last good state, which is then not converged
                energy.restore(state, good)
                kept, converged, settled, residual = good_kept, False, False, None
        return self.report(kept, converged, residual, eta, backoffs, tol, settled, origin)

    def next_check(self, taken: int, residual: float, last: tuple[int, float] | None, tol: float,
                   least: int) -> int:
        """The step of the next residual check. Where the residual fell since the last check, at
        the rate r = (residual / last)^(1 / steps between them) per step, one step after the
        step where that rate reaches ``tol`` (r^n residual <= tol: a check costs several steps,
        a step too many costs one), at least one step on and not before the solver's ``least``;
        never more than the check stride on. A linearly converging iteration (sweeps, descent
        near an equilibrium) then stops within two steps of where it converges, not up to a
        stride later, for no more checks."""
        if last is None or not 0 < residual < last[1] < math.inf:
            return taken + self.every
        rate = (residual / last[1]) ** (1 / (taken - last[0]))
        if not 0 < rate < 1 or not tol / residual > 0:  # no measurable fall (a rate of 1 to rounding)
            return taken + self.every
        ahead = math.ceil(math.log(tol / residual) / math.log(rate)) + 1
        return taken + min(max(ahead, least - taken, 1), self.every)

    def divergence(self, problem: str, step: int, step_size: float, good_step: int) -> DivergenceError:
        """The error to raise; where energies were watched sparsely, every step from the start
        is first replayed with a trace, which raises naming the first bad one."""
        if self.every > 1:
            self.energy.restore(self.state, self.start)
            relax(self.energy, self.state, step, self.first_step, record=True, solver=self.solver)
        return _divergence(problem, step, step_size, good_step)

    def report(self, kept: int, converged: bool, residual: float | None, step_size: float | Tensor,
               backoffs: int = 0, tol: float | None = None, settled: bool = False,
               origin: tuple[list[Tensor], list[Tensor]] | None = None) -> Relaxation:
        """The report of the returned state, its residual measured in plain coordinates unless
        the loop has it (faster coordinates, or a state restored after the last measurement)."""
        if residual is None:
            residual = relative_residual(self.plain.gradients(self.state), self.plain.local_terms(self.state), origin)
        report = InferenceReport(self.solver.name, kept, converged, float(residual), float(step_size), backoffs,
                                 tol, settled)
        trace = InferenceTrace.from_rows(self.rows, converged, steps=kept) if self.record else None
        return Relaxation(report, trace)


def fixed_steps(energy: Energy, state: Any, solver: Solver, steps: int, step_size: Tensor,
                every: int) -> tuple[Tensor, Tensor, Tensor, Any]:
    """What ``_Phase.plain_loop`` computes on the device without a trace, for a caller that
    traces it into a larger graph (``algorithms.graph_estimate``): (the starting energy, the
    last step size, the energies after every ``every``-th step and the last, the ``Balance`` of
    the returned state in the plain coordinates). Nothing is read back: the caller judges the
    energies with ``EnergyWatch`` and the residual with ``solvers.largest_ratio_of``."""
    plain = solver.coordinates(energy)
    start = plain.total(state)
    coordinates = solver.fixed_step_coordinates(energy, state, steps)
    step_size, rows = solvers.run(coordinates, solver.start(), state, step_size, steps, every)
    coordinates.leave(state)
    return start, step_size, torch.stack([row[2] for row in rows]), solvers.measure(plain, state)[1]


class EnergyWatch:
    """Tracks the watched energies and names the first one that shows divergence."""

    def __init__(self, start: float, rise_tolerance: float, dtype: torch.dtype):
        self.start = self.lowest = start
        self.unbounded = False
        self.rise_tolerance = rise_tolerance
        self.epsilon = torch.finfo(dtype).eps

    def problem(self, value: float) -> str | None:
        plunged = self.lowest < self.start - 1e6 * (1 + abs(self.start))  # down by many orders
        if value == -math.inf or (not math.isfinite(value) and plunged):
            self.unbounded = True
            return (f"the energy fell without bound (to {self.lowest:.3g}, then {value}): it has no "
                    "minimum for these weights "
                    "(a Hopfield energy with unbounded units such as ReLU is bounded below only while "
                    "its couplings are weak; bounded units, e.g. hardsigmoid, always have one)")
        if not math.isfinite(value):
            return f"the energy became {value}"
        allowance = (self.rise_tolerance * (self.start - self.lowest)
                     + ROUNDING_ALLOWANCE * self.epsilon * max(abs(self.start), abs(value)))
        if value > self.lowest + allowance:
            return f"the energy rose from {self.lowest:.6g} to {value:.6g}"
        self.lowest = min(self.lowest, value)
        return None


def _divergence(problem: str, step: int, step_size: float, good_step: int) -> DivergenceError:
    return DivergenceError(
        f"inference diverged: {problem} at step {step} with step_size {step_size:g} (last good "
        f"step {good_step}); lower step_size (e.g. to {step_size / 2:g}), set step_size='auto' "
        "to back off automatically, or check the inputs for NaN/Inf"
    )
