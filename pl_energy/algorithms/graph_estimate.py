"""pc_nudge's estimate as one compiled graph: the default, and the papers' fixed steps.

Two settings of ``PredictiveCoding`` need no host read until the estimate is done:

- the default (``lam="auto"``, the error solver, a tolerance): each nudged phase starts at its
  first-order equilibrium eps_l = lam r_l (Millidge et al. 2022 Eqs. 12-15) and, at one
  rounding unit of nudge (``core.nudge``), is converged there: inference takes no step, and
  the estimate is the feedforward pass, one backward sweep for the response r, the residual at
  the start, and the parameter VJPs of the update and of its limit;
- the papers' fixed steps (``tol=None``, a fixed lam, a solver whose steps read nothing back,
  e.g. ``PAPER_SETTINGS``): T steps from the free state, whose energies are judged afterwards
  (``core.inference.fixed_steps``; T at most ``compiled_steps.RUN_LENGTH``, the graph unrolls
  them).

Eagerly, the estimate is a hundred or more small operations dispatched from Python and several
reads back to the host (class indices, kinks, lam, residuals, energies, the error bound).
``estimate_graph`` is the same functions of the energy, traced by ``torch.compile`` as one graph
(``fullgraph=True``) that reads nothing back (lam is a 0-dim tensor in it where it is chosen per
batch). Every decision the eager path takes on a read is taken after the graph, on one read
(``graph_estimate``):

- class-index targets are checked before the graph (``Loss.prepare_targets``, as eagerly);
- a ReLU unit exactly on its kink at the free state (which the eager path pins:
  ``core.kinks``), a displacement that is not a positive finite number (the eager lam is then
  1), a default phase whose residual at its start is above ``tol`` or not finite, a fixed-step
  phase whose energy the eager watch would call divergent: the graph's result is dropped and the
  eager estimate runs (the same computation to rounding, which goes on where the graph stops or
  raises the eager error);
- lam whose reciprocal overflows is refused with the eager path's error;
- torch keeps ``recompile_limit`` graphs of this function (8 by default: batch sizes, dtypes,
  networks, settings); beyond that the estimate runs eagerly.

The numbers are the eager path's to rounding: an automatic lam is formed in the parameters'
dtype here, in Python's float there (``tests/test_compiled_inference.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..core import compiled_steps
from ..core.inference import EnergyWatch, InferenceReport, first_step, fixed_steps
from ..core.kinks import units_on_kink
from ..core.losses import Loss
from ..core.nudge import automatic_strength, finite_difference_step
from ..core.predictive_coding import PCState, PredictiveCodingEnergy
from ..core.solvers import ErrorCoordinates, Solver, largest_ratio_of, measure, solver_class
from .base import Estimate
from .contrastive import Phase, contrast
from .gradients import ErrorLayout, name_layer_gradients

if TYPE_CHECKING:
    from .predictive_coding import PredictiveCoding


@dataclass(frozen=True)
class FixedSteps:
    """The papers' dynamics in the graph: ``steps`` steps of ``solver`` from the free state,
    the energy watched after every ``every``-th step and the last."""

    solver: Solver
    steps: int
    every: int


def estimate_graph(energy: PredictiveCodingEnergy, inputs: Tensor, targets: Tensor, nudge: Tensor | None,
                   step: float, signs: tuple[int, ...], layout: ErrorLayout | None, fixed: FixedSteps | None,
                   step_size: Tensor | None) -> tuple[list[list[Tensor]], Tensor, Tensor, Tensor, tuple, tuple]:
    """(the update per layer, the free output, its loss, the reads, their names, their sizes):
    the estimate of ``PredictiveCoding._nudged_phases`` and ``contrast``, with ``targets``
    prepared, the nudge fixed (a 0-dim tensor) or (None) the finite-difference ``step`` over the
    displacement per unit, and each phase stopped at its first-order start (``fixed`` None) or run for fixed
    steps from the free state at ``step_size``. The reads, one tensor: the units on a kink at
    the free state, the displacement per unit nudge (automatic nudge), each phase's residual
    norms (``Balance``) and, for fixed steps, its starting energy, watched energies and last
    step size; with a ``layout``, the error bound's norms (``ErrorLayout.norms``)."""
    free = energy.free_state(inputs, targets, prepared=True)
    reads = {"kinks": _kinks(energy, free)}
    response = None if nudge is not None and layout is None else energy.first_order_response(free)
    if nudge is None:
        reads["ratio"] = energy.displacement_ratio(free, response)
        lam = step / reads["ratio"]
    else:
        lam = nudge
    phases = {}
    for sign in signs:
        if fixed is None:
            state = energy.nudged(free, sign * lam, response)
            balance = measure(ErrorCoordinates(energy), state)[1]
        else:
            state = energy.nudged(free, sign * lam)
            start, last, totals, balance = fixed_steps(energy, state, fixed.solver, fixed.steps, step_size, fixed.every)
            reads.update({f"start {sign}": start, f"step size {sign}": last, f"energies {sign}": totals})
        reads[f"balance {sign}"] = balance.norms
        phases[sign] = Phase(energy, state)
    update = contrast(phases.get(1), phases.get(-1), 1 / (len(signs) * lam))
    if layout is not None and layout.names:
        reads["errors"] = layout.norms(update, energy.response_parameter_gradients(free, response))
    dtype = free.output.dtype
    return (update, free.output, energy.loss.value(free.output, free.targets),
            torch.cat([read.reshape(-1).to(dtype) for read in reads.values()]),
            tuple(reads), tuple(read.numel() for read in reads.values()))


def _kinks(energy: PredictiveCodingEnergy, free: PCState) -> Tensor:
    """The units ``core.kinks`` would pin at the free state, over all layers (0-dim)."""
    count = free.output.new_zeros((), dtype=torch.long)
    for linearizer, linearization in zip(energy.linearizers, free.linearizations):
        applied = linearizer.activation_input(linearization)
        units = None if applied is None else units_on_kink(*applied)
        if units is not None:
            count = count + units
    return count


def graph_estimate(algorithm: PredictiveCoding, network: nn.Module, energy: PredictiveCodingEnergy,
                   inputs: Tensor, targets: Tensor, loss: Loss) -> Estimate | None:
    """``algorithm``'s estimate (a ``PredictiveCoding`` at the default or at fixed steps:
    ``PredictiveCoding._graph_setting``) through the compiled graph, or None where the eager
    path is to run (see the module docstring)."""
    targets = loss.prepare_targets(targets, inputs.new_empty((inputs.shape[0], energy.linearizers[-1].output_width())))
    layout = ErrorLayout.of(network) if algorithm.error_estimate else None
    solver = solver_class(algorithm.solver)()
    eta = first_step(solver, algorithm.step_size)
    nudge = None if algorithm.lam == "auto" else torch.tensor(float(algorithm.lam), dtype=inputs.dtype,
                                                                device=inputs.device)  # an input: no graph per lam
    fixed = None if algorithm.tol is not None else FixedSteps(solver, algorithm.steps, solver.check_every)
    step = finite_difference_step(inputs.dtype, algorithm.centered, carried=True)
    step_size = None if fixed is None else torch.tensor(eta, dtype=inputs.dtype, device=inputs.device)
    graph = compiled_steps.compiled(estimate_graph, algorithm.compile_inference, inputs.device.type, _no_graph,
                                    "pc_nudge's estimate")
    result = graph(energy, inputs, targets, nudge, step, algorithm.signs(), layout, fixed, step_size)
    if result is None:
        return None
    update, output, value, reads, names, sizes = result
    if compiled_steps.replays_cuda_graphs(algorithm.compile_inference):
        update, output, value = [[g.clone() for g in layer] for layer in update], output.clone(), value.clone()
    flat = reads.tolist()  # the one host read
    offsets = [sum(sizes[:index]) for index in range(len(sizes) + 1)]
    values = {name: flat[offsets[index]:offsets[index + 1]] for index, name in enumerate(names)}
    if values["kinks"][0]:
        return None
    if nudge is None:
        ratio = values["ratio"][0]
        if not (ratio > 0 and math.isfinite(ratio)):
            return None
        lam = automatic_strength(step, ratio)  # refuses a lam whose reciprocal overflows, as eagerly
    else:
        lam = float(algorithm.lam)
    reports = [_report(algorithm, solver, fixed, eta, values, sign, inputs.dtype) for sign in algorithm.signs()]
    if None in reports:
        return None
    errors = None if layout is None else layout.errors(values.get("errors", []))
    return Estimate(name_layer_gradients(network, update), output, value, None, tuple(reports), lam, errors)


def _no_graph(*args) -> None:
    """What the graph gives past torch's recompile limit: nothing (the eager estimate runs)."""
    return None


def _report(algorithm: PredictiveCoding, solver: Solver, fixed: FixedSteps | None, eta: float,
            values: dict[str, list[float]], sign: int, dtype: torch.dtype) -> InferenceReport | None:
    """The phase's report as the eager loop would give it, from the graph's reads; None where the
    eager loop would go on (a start above ``tol``) or stop with an error (an energy its watch
    calls divergent)."""
    norms = values[f"balance {sign}"]
    hidden = len(norms) // 3
    residual = largest_ratio_of(norms[:hidden], norms[hidden:2 * hidden], norms[2 * hidden:])
    if fixed is None:
        return InferenceReport(solver.name, 0, True, residual, eta, 0, algorithm.tol) if residual <= algorithm.tol else None
    watch = EnergyWatch(values[f"start {sign}"][0], solver.rise_tolerance, dtype)
    if not math.isfinite(watch.start) or any(watch.problem(value) for value in values[f"energies {sign}"]):
        return None
    # a rule that changes its step size does so on the device, eagerly too; the others keep the given one
    last = values[f"step size {sign}"][0] if solver.start().needs_residual else eta
    return InferenceReport(solver.name, fixed.steps, False, residual, last)
