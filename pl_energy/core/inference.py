"""Inference: gradient descent on the energy over the free activities (seed 003 Eq. 1).

x_l <- x_l - step_size * s_l * dE/dx_l for every free layer l, where s_l is the energy's
per-layer step scale (1 unless the energy is precision-weighted). E is the per-sample energy
(a sum over the batch), so the dynamics of one sample do not depend on the batch size.

With ``tol`` set, inference stops once the last step's change of energy is at most ``tol`` times
the change since the start, |E_t - E_{t-1}| <= tol * |E_t - E_0|: a scale-free test that does not
depend on how large E is (for PC-Nudge E is dominated by lam L, which inference barely moves). A non-finite energy
stops inference with an error naming the first bad step and the step size to lower.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from .trace import InferenceTrace


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

    Returns the trace when ``record`` is set (or a tolerance needs the energies anyway).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    watch = record or tol is not None
    start = energy.snapshot(state)
    energy.begin(state, steps)
    rows = [energy.components(state)] if watch else []
    if watch and not math.isfinite(float(rows[0][2])):
        raise DivergenceError(
            f"the energy is {float(rows[0][2])} before inference starts: the inputs, targets or "
            "network parameters contain NaN or Inf"
        )
    converged = False
    for t in range(1, steps + 1):
        energy.step(state, energy.activity_gradients(state), step_size)
        if not watch:
            continue
        rows.append(energy.components(state))
        total, previous, first = float(rows[-1][2]), float(rows[-2][2]), float(rows[0][2])
        if not math.isfinite(total):
            raise _divergence(t, step_size, total)
        if tol is not None and abs(total - previous) <= tol * abs(total - first):
            converged = True
            break
    energy.finish(state)
    if not watch:
        final = energy.components(state)[2]
        if not torch.isfinite(final):
            energy.restore(state, start)
            relax(energy, state, steps, step_size, record=True)  # raises at the first bad step
            raise _divergence(steps, step_size, float(final))
        return None
    return InferenceTrace.from_rows(rows, converged)


def _divergence(step: int, step_size: float, value: float) -> DivergenceError:
    return DivergenceError(
        f"inference diverged: the energy became {value} at step {step} with step_size "
        f"{step_size}; lower step_size (e.g. to {step_size / 2:g}) or check the inputs for "
        "NaN/Inf"
    )
