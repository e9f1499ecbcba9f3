"""Inference: gradient descent on the energy over the free activities (seed 003 Eq. 1).

x_l <- x_l - step_size * s_l * dE/dx_l for every free layer l, where s_l is the energy's
per-layer step scale (1 unless the energy is precision-weighted). E is the per-sample energy
(a sum over the batch), so the dynamics of one sample do not depend on the batch size.

With ``tol`` set, inference stops once the energy's change per step is at most ``tol`` times its
change since the start, |E_t - E_{t-k}| / k <= tol * |E_t - E_0|: a scale-free test that does not
depend on how large E is (for PC-Nudge E is dominated by lam L, which inference barely moves).
The energy is evaluated every step when the trace is recorded, else every ``CHECK_EVERY`` steps
(k), so that the test costs a fraction of a step. A non-finite energy
stops inference with an error naming the first bad step and the step size to lower.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from .trace import InferenceTrace


CHECK_EVERY = 5


class DivergenceError(FloatingPointError):
    """Inference produced a non-finite energy."""


class Energy(Protocol):
    """What inference needs of an energy and its state."""

    def activity_gradients(self, state) -> list[Tensor]: ...

    def step(self, state, gradients: list[Tensor], step_size: float) -> None: ...

    def components(self, state) -> tuple[Tensor, Tensor, Tensor]: ...

    def snapshot(self, state): ...

    def restore(self, state, snapshot) -> None: ...

    def begin(self, state, steps: int) -> None: ...

    def finish(self, state) -> None: ...


def relax(
    energy: Energy,
    state,
    steps: int,
    step_size: float,
    tol: float | None = None,
    record: bool = False,
) -> InferenceTrace | None:
    """Run up to ``steps`` inference steps in place on ``state``.

    Returns the trace when ``record`` is set, or when a tolerance needs the energies anyway (then
    with one row every ``CHECK_EVERY`` steps).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    watch = record or tol is not None
    start = energy.snapshot(state)
    rows = [energy.components(state)] if watch else []
    if watch and not math.isfinite(float(rows[0][2])):
        raise DivergenceError(
            f"the energy is {float(rows[0][2])} before inference starts: the inputs, targets or "
            "network parameters contain NaN or Inf"
        )
    energy.begin(state, steps)
    stride = 1 if record else CHECK_EVERY
    first = float(rows[0][2]) if watch else 0.0
    previous, measured, converged, taken = first, 0, False, 0
    try:
        for taken in range(1, steps + 1):
            energy.step(state, energy.activity_gradients(state), step_size)
            if not watch or (taken % stride and taken < steps):
                continue
            rows.append(energy.components(state))
            total = float(rows[-1][2])
            if not math.isfinite(total):
                if stride > 1:  # name the first bad step, not the first checked one
                    _rerun_to_first_bad_step(energy, state, start, taken, step_size)
                raise _divergence(taken, step_size, total)
            if tol is not None and abs(total - previous) <= (taken - measured) * tol * abs(total - first):
                converged = True
                break
            previous, measured = total, taken
    finally:
        energy.finish(state)
    if not watch:
        final = energy.components(state)[2]
        if not torch.isfinite(final):
            _rerun_to_first_bad_step(energy, state, start, steps, step_size)
            raise _divergence(steps, step_size, float(final))
        return None
    return InferenceTrace.from_rows(rows, converged, steps=taken, stride=stride)


def _rerun_to_first_bad_step(energy: Energy, state, start, steps: int, step_size: float) -> None:
    """Replay inference from ``start`` watching every step: it raises at the first bad one."""
    energy.restore(state, start)
    relax(energy, state, steps, step_size, record=True)


def _divergence(step: int, step_size: float, value: float) -> DivergenceError:
    return DivergenceError(
        f"inference diverged: the energy became {value} at step {step} with step_size "
        f"{step_size}; lower step_size (e.g. to {step_size / 2:g}) or check the inputs for "
        "NaN/Inf"
    )
