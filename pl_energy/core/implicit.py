"""The gradient of the loss at a free equilibrium, by implicit differentiation.

At a free equilibrium x*(theta) of an energy I (dI/dx = 0), the loss L(x*_L) has

    dL/dtheta = -(d^2 I / dtheta dx) v,   where   (d^2 I / dx^2) v = dL/dx

(recurrent backprop, Almeida 1990 / Pineda 1987; Scellier & Bengio 2019). v is found by
conjugate gradients per sample with Hessian-vector products from autograd. This is the exact
reference for EP and CHL, whose free equilibrium is not the feedforward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum((x * y).flatten(1).sum(1) for x, y in zip(a, b))


def conjugate_gradient(hvp: Callable[[list[Tensor]], list[Tensor]], rhs: list[Tensor],
                       max_iter: int = 1000, rtol: float = 1e-12) -> list[Tensor]:
    """Solve H v = rhs per sample (H symmetric positive definite per sample), to a residual
    ||rhs - H v|| of at most ``rtol`` ||rhs|| per sample (or ``max_iter`` iterations)."""
    v = [torch.zeros_like(r) for r in rhs]
    residual = [r.clone() for r in rhs]
    direction = [r.clone() for r in rhs]
    rr = _dot(residual, residual)
    limit = rtol ** 2 * rr.clamp_min(torch.finfo(rr.dtype).tiny)  # rr is a squared norm
    for _ in range(max_iter):
        if bool((rr <= limit).all()):
            break
        hd = hvp(direction)
        curvature = _dot(direction, hd)
        alpha = torch.where(rr > limit, rr / curvature, torch.zeros_like(rr))
        v = [a + _expand(alpha, d) * d for a, d in zip(v, direction)]
        residual = [r - _expand(alpha, h) * h for r, h in zip(residual, hd)]
        new_rr = _dot(residual, residual)
        beta = torch.where(rr > limit, new_rr / rr, torch.zeros_like(rr))
        direction = [r + _expand(beta, d) * d for r, d in zip(residual, direction)]
        rr = new_rr
    return v


def _expand(scalars: Tensor, like: Tensor) -> Tensor:
    return scalars.reshape(-1, *([1] * (like.dim() - 1)))


def equilibrium_gradient(internal_energy: Callable[[list[Tensor]], Tensor], inputs: Tensor,
                         free: list[Tensor], loss_gradient: Tensor,
                         parameters: list[Tensor]) -> list[Tensor]:
    """dL/dtheta (batch mean) at the free equilibrium ``free`` = [x_1..x_L].

    ``internal_energy(activities)`` is the batch-summed energy of [x_0, x_1..x_L];
    ``loss_gradient`` is dl/dx_L per sample.
    """
    with torch.enable_grad():
        x = [a.detach().requires_grad_(True) for a in free]
        energy = internal_energy([inputs, *x])
        grad_x = torch.autograd.grad(energy, x, create_graph=True)

        def hvp(vector: list[Tensor]) -> list[Tensor]:
            return list(torch.autograd.grad(grad_x, x, vector, retain_graph=True))

        rhs = [torch.zeros_like(a) for a in x[:-1]] + [loss_gradient.detach()]
        v = conjugate_gradient(hvp, rhs)
        mixed = torch.autograd.grad(grad_x, parameters, v, allow_unused=True)
    batch = inputs.shape[0]
    return [torch.zeros_like(p) if g is None else -g / batch for p, g in zip(parameters, mixed)]
