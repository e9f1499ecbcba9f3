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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .energy import Energy
from .solvers import Balance, Solver, relative_residual, solver_class
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
        pieces_changed: where an active-set solve ran after descent settled (``core.active_set``),
            the units whose side (ReLU) or winner (max-pooling) its rounds changed; else None.
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
) -> Relaxation:
    """Relax ``state`` in place for at most ``steps`` steps of ``solver``.

    Args:
        energy: the energy (``pl_energy.core.Energy``).
        state: its state, e.g. from ``energy.free_state(inputs, targets)``; changed in place.
        steps: the step cap (the exact number of steps when ``tol`` is None).
        step_size: the solver's step; None for its default, "auto" to back off on rises.
        tol: stop once the relative residual is at most this.
        record: keep the energy components of every step in the returned trace.
        solver: "gd", "error" (predictive-coding energies) or "nesterov", or a ``Solver``.
        on_step: called as ``on_step(step, state)`` at the start (step 0) and after every step,
            to watch the dynamics (it must not change the state). Fixed-step descent then
            runs in the plain coordinates, never in faster ones of the same dynamics
            (``core.reduced_input``), so that the watched state is always in its plain form.
        measured_from: measure the residual against what changed since this state (its
            gradients and local terms), for a phase nudged off an equilibrium.
    """
    name = solver if isinstance(solver, str) else solver.name
    check_settings(name, steps, step_size, tol)
    solver = solver_class(solver)() if isinstance(solver, str) else solver
    plain = solver.coordinates(energy)
    adaptive = solver.adaptive or step_size == "auto"
    first_step = solver.default_step if step_size in (None, "auto") else float(step_size)
    every = 1 if record else solver.check_every
    start = energy.snapshot(state)
    origin = None if measured_from is None else (plain.gradients(measured_from), plain.local_terms(measured_from))
    first = energy.components(state)
    watch = _EnergyWatch(float(first[2]), solver.rise_tolerance, first[2].dtype)
    if not math.isfinite(watch.start):
        raise DivergenceError(
            f"the energy is {watch.start} before inference starts: the inputs, targets or "
            "network parameters contain NaN or Inf")
    rows = [first] if record else []
    iteration = solver.start()
    eta, taken, kept, backoffs = first_step, 0, 0, 0  # kept: the steps behind the current state
    converged = settled = False
    residual = None
    good, good_step, good_kept = start, 0, 0

    def fail(problem: str) -> DivergenceError:
        """The error to raise; with sparse watches, first replay every step to name the first bad one."""
        if every > 1:
            coordinates.leave(state)
            energy.restore(state, start)
            relax(energy, state, taken, first_step, record=True, solver=solver)
        return _divergence(problem, taken, eta, good_step)

    # faster coordinates of the same dynamics (the PC energy's first layer in the row space of
    # W_2) change the norms the residual is measured in and keep part of the state outside it:
    # they serve only plain fixed-step descent that is not adaptive (it never restores a
    # snapshot) and has no tolerance or on_step (the residual is taken once, at the end, in
    # plain coordinates); a recorded trace reads the energy through them (``components``)
    faster = None if (on_step is not None or tol is not None or adaptive) else (
        solver.faster_coordinates(energy, state, steps))
    coordinates = plain if faster is None else faster
    if on_step is not None:
        on_step(0, state)
    try:
        while True:
            if coordinates is not plain and taken >= steps:
                break
            gradients = coordinates.gradients(state)
            # the residual: at the end, before every move for rules that read it, and every
            # `every` steps when a tolerance asks for it
            if taken >= steps or iteration.needs_residual or (tol is not None and taken % every == 0):
                if not gradients:  # no free layer: the state is its own equilibrium
                    residual, converged = 0.0, tol is not None
                    break
                balance = Balance.of(gradients, coordinates.local_terms(state), origin)
                residual = balance.residual
                if tol is not None and (taken >= solver.min_steps(len(gradients)) or residual == 0):
                    converged = residual <= tol
                    settled = not converged and iteration.settled(eta, balance, tol)
                    if converged or settled:
                        break
            if taken >= steps:
                break
            eta *= iteration.observe(residual if iteration.needs_residual else None)
            coordinates.move(state, iteration.direction(gradients), eta)
            taken, kept = taken + 1, kept + 1
            if on_step is not None:
                on_step(kept, state)
            if not (record or taken % every == 0 or taken == steps):
                continue
            row = coordinates.components(state)
            problem = watch.problem(float(row[2]))
            if problem is None:
                if record:
                    rows.append(row)
                good, good_step, good_kept = energy.snapshot(state), taken, kept
                continue
            if not adaptive or watch.unbounded:  # no step size finds a minimum that is not there
                raise fail(problem)
            energy.restore(state, good)
            kept = good_kept
            if on_step is not None:
                on_step(kept, state)
            eta, backoffs = eta / 2, backoffs + 1
            iteration.reset()
            if eta < first_step * SMALLEST_STEP_FRACTION:
                raise DivergenceError(
                    f"inference found no step that lowers the energy (step_size fell to {eta:g} "
                    f"after {backoffs} back-offs at step {taken}); check the inputs and the network "
                    "for NaN/Inf or extreme values")
        if taken != good_step:  # stopped between two watches: the returned state is watched too
            problem = watch.problem(float(coordinates.components(state)[2]))
            if problem is not None and not adaptive:
                raise fail(problem)
            if problem is not None:  # back to the last good state, which is then not converged
                energy.restore(state, good)
                kept, converged, settled, residual = good_kept, False, False, None
    finally:
        coordinates.leave(state)
    if residual is None:  # faster coordinates, or a state restored after the last measurement
        residual = relative_residual(plain.gradients(state), plain.local_terms(state), origin)
    report = InferenceReport(name, kept, converged, float(residual), eta, backoffs, tol, settled)
    trace = InferenceTrace.from_rows(rows, converged, steps=kept) if record else None
    return Relaxation(report, trace)


class _EnergyWatch:
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
