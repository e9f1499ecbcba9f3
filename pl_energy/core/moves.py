"""The move of a descent step, v <- v - s d, with s a number or a tensor.

A step size held as a 0-dim tensor can change without a host read (a damped step,
``solvers.DampedIteration``) and is an input, not a constant, of a compiled step
(``core.compiled_steps``), which therefore does not recompile when it changes. A number goes
through ``torch.add``'s ``alpha`` (one kernel, as before); a tensor through ``torch.addcmul``
(one kernel too: v + (-1) d s, the same product and sum).
"""

from __future__ import annotations

import torch
from torch import Tensor


def descend(value: Tensor, direction: Tensor, scale: float | Tensor) -> Tensor:
    """value - scale * direction."""
    if isinstance(scale, Tensor):
        return torch.addcmul(value, direction, scale, value=-1)
    return torch.add(value, direction, alpha=-scale)


def divide(step_size: float | Tensor, precision: float) -> float | Tensor:
    """step_size / precision, without an operation when the precision is 1."""
    return step_size if precision == 1.0 else step_size / precision
