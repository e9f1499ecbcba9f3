"""PC-Nudge's default estimate as one compiled graph, where its phases converge at their start.

With ``lam="auto"`` and the error solver (the defaults), each nudged phase starts at its
first-order equilibrium eps_l = lam r_l (Millidge et al. 2022 Eqs. 12-15) and, at one rounding
unit of nudge (``core.nudge``), is converged there: inference takes no step, and the estimate
is the feedforward pass, one backward sweep for the response r, the residual at the start, and
the parameter VJPs of the update and of its limit (``PredictiveCoding._nudged_phases``).
Eagerly that is about a hundred small operations dispatched from Python and seven reads back to
the host; ``first_order_graph`` is the same functions of the energy, traced by ``torch.compile``
as one graph (``fullgraph=True``) that reads nothing back: lam is a 0-dim tensor in it. Every
decision the eager path takes on a read is taken after the graph, on one read
(``first_order_estimate``):

- class-index targets are checked before the graph (``Loss.prepare_targets``, as eagerly);
- a ReLU unit exactly on its kink at the free state (which the eager path pins:
  ``core.kinks``), a displacement that is not a positive finite number (the eager lam is then
  1), a phase whose residual at its start is above ``tol`` or not finite: the graph's result is
  dropped and the eager estimate runs (the same computation to rounding, which then goes on
  where the graph stops: steps, the active set, the divergence checks);
- lam whose reciprocal overflows is refused with the eager path's error;
- torch keeps ``recompile_limit`` graphs of this function (8 by default: batch sizes, dtypes,
  networks, settings); beyond that the estimate runs eagerly.

The numbers are the eager path's to rounding: lam is formed in the parameters' dtype here, in
Python's float there (``tests/test_compiled_inference.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..core import compiled_steps
from ..core.inference import InferenceReport, first_step
from ..core.kinks import units_on_kink
from ..core.losses import Loss
from ..core.nudge import automatic_strength, finite_difference_step
from ..core.predictive_coding import PCState, PredictiveCodingEnergy
from ..core.solvers import ErrorCoordinates, largest_ratio_of, measure, solver_class
from .base import Estimate
from .contrastive import Phase, contrast
from .gradients import ErrorLayout, name_layer_gradients

_COMPILED: dict[tuple, Any] = {}


def first_order_graph(energy: PredictiveCodingEnergy, inputs: Tensor, targets: Tensor, step: float,
                      signs: tuple[int, ...], layout: ErrorLayout | None
                      ) -> tuple[list[list[Tensor]], Tensor, Tensor, Tensor]:
    """(the update per layer, the free output, its loss, the reads): the estimate of
    ``PredictiveCoding._nudged_phases`` and ``contrast`` for phases that stop where they start,
    with ``targets`` prepared. The reads, one tensor: the units on a kink at the free state,
    the displacement per unit nudge, lam, each phase's (3, L) residual norms (``Balance``) and,
    with a ``layout``, the error bound's norms (``ErrorLayout.norms``)."""
    free = energy.free_state(inputs, targets, prepared=True)
    response = energy.first_order_response(free)
    ratio = energy.displacement_ratio(free, response)
    lam = step / ratio
    phases, balances = {}, []
    for sign in signs:
        state = energy.nudged(free, sign * lam, response)
        balances.append(measure(ErrorCoordinates(energy), state)[1].norms.flatten())
        phases[sign] = Phase(energy, state)
    update = contrast(phases.get(1), phases.get(-1), 1 / (len(signs) * lam))
    reads = [_kinks(energy, free).to(ratio.dtype).reshape(1), ratio.reshape(1), lam.reshape(1), *balances]
    if layout is not None and layout.names:
        reads.append(layout.norms(update, energy.response_parameter_gradients(free, response)))
    return update, free.output, energy.loss.value(free.output, free.targets), torch.cat(reads)


def _kinks(energy: PredictiveCodingEnergy, free: PCState) -> Tensor:
    """The units ``core.kinks`` would pin at the free state, over all layers (0-dim)."""
    count = free.output.new_zeros((), dtype=torch.long)
    for linearizer, linearization in zip(energy.linearizers, free.linearizations):
        applied = linearizer.activation_input(linearization)
        units = None if applied is None else units_on_kink(*applied)
        if units is not None:
            count = count + units
    return count


def first_order_estimate(algorithm, network: nn.Module, energy: PredictiveCodingEnergy, inputs: Tensor,
                         targets: Tensor, loss: Loss) -> Estimate | None:
    """``algorithm``'s estimate (a ``PredictiveCoding``) through the compiled graph, or None
    where its phases do not stop at their start (see the module docstring)."""
    device = inputs.device.type
    key = (device, *sorted((name, repr(value)) for name, value in algorithm.compile_inference.items()))
    if key not in _COMPILED:
        _COMPILED[key] = compiled_steps.compile_graph(first_order_graph, algorithm.compile_inference, device)
    output_like = inputs.new_empty((inputs.shape[0], *_output_shape(energy)))
    targets = loss.prepare_targets(targets, output_like)
    layout = ErrorLayout.of(network) if algorithm.error_estimate else None
    signs = algorithm.signs()
    step = finite_difference_step(inputs.dtype, algorithm.centered, carried=True)
    try:
        update, output, value, reads = _COMPILED[key](energy, inputs, targets, step, signs, layout)
    except torch._dynamo.exc.FailOnRecompileLimitHit:
        return None  # more shapes and settings in this process than torch keeps graphs for
    if compiled_steps.replays_cuda_graphs(algorithm.compile_inference):
        update, output, value = [[g.clone() for g in layer] for layer in update], output.clone(), value.clone()
    values = reads.tolist()  # the one host read
    kinks, ratio, lam = values[:3]
    if kinks or not (ratio > 0 and math.isfinite(ratio)):
        return None
    automatic_strength(step, ratio)  # refuses a lam whose reciprocal overflows, as eagerly
    hidden = len(energy.layers) - 1
    rows = [values[3 + index * 3 * hidden:3 + (index + 1) * 3 * hidden] for index in range(len(signs))]
    residuals = [largest_ratio_of(row[:hidden], row[hidden:2 * hidden], row[2 * hidden:]) for row in rows]
    if not all(residual <= algorithm.tol for residual in residuals):
        return None
    eta = first_step(solver_class(algorithm.solver), algorithm.step_size)
    reports = tuple(InferenceReport(algorithm.solver, 0, True, residual, eta, 0, algorithm.tol) for residual in residuals)
    errors = None if layout is None else layout.errors(values[3 + len(signs) * 3 * hidden:])
    return Estimate(name_layer_gradients(network, update), output, value, None, reports, lam, errors)


def _output_shape(energy: PredictiveCodingEnergy) -> tuple[int, ...]:
    """The shape of one sample's output of a closed-form energy's last layer."""
    last = energy.linearizers[-1]
    parts = last.parts if last.parts is not None else last.scaled_parts
    return (parts[0].weight.shape[0],)
