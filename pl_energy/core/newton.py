"""Truncated Newton on the errors of a predictive-coding energy: ``solver="newton"``.

In error coordinates (``solvers.ErrorCoordinates``, Goemaere et al. 2025) each sample's energy is

    E_b(e) = sum_l pi_l/2 ||e_l||^2 + lam l_b(x_L(e)),   x_l = layer_l(x_{l-1}) + e_l,

with gradient g = P e + lam J^T dl/dx_L (J = dx_L/de, P = diag(pi_l)) and Hessian

    H = P + lam J^T (d^2 l / dx_L^2) J + lam sum_k (dl/dx_L)_k d^2 x_{L,k} / de^2.

Error descent at step 1 is the fixed-point iteration e <- -P^-1 lam J^T dl/dx_L; it converges
while lam times the loss curvature seen through J is small, which is PC-Nudge's case. With the
target clamping the output (pc, lam = 1) on a trained deep network it is not: the equilibrium
is far from the first-order point (on a 10-layer tanh MLP after 300 batches of pc's own
training the energy falls from 0.58 at the first-order start to 0.033), the middle term makes
H ill-conditioned along the C output directions (step-1 iterations diverge, halved ones crawl)
and the last term, with an O(1) loss gradient, makes E non-convex, so a Gauss-Newton step
(which drops it) stalls too (measured: residual 1 -> 0.02, then flat). Newton's direction with
the exact H handles all three.

Each step (one ``move``):

1. the gradient and the Hessian-vector products H v by autograd through the layers (a forward
   pass from the clamped input with the errors as leaves, the gradient with its graph kept,
   then one double-backward per product);
2. conjugate gradients on H d = -g preconditioned by P^-1, per sample (each sample's energy is
   its own problem: the batch's Hessian is block-diagonal), stopped at a relative residual of
   min(1/2, ||g_b||^(1/2)) (Eisenstat & Walker's forcing term, superlinear convergence) or at
   negative curvature (Steihaug 1983: then the last direction of positive curvature, or
   steepest descent on the first iteration);
3. a backtracking line search per sample from ``step_size`` (1: the Newton step), accepting
   E_b(e + t d) <= E_b(e) + 1e-4 t g_b.d_b, with a rounding allowance of 64 machine epsilons of
   E_b + lam max|x_L| (near the equilibrium float32 resolves no decrease of E, and the step is
   taken on its quadratic model); a sample whose step was shortened is damped (Levenberg-
   Marquardt: H + mu P, mu x10), one that took it whole less (mu / 10).

A step costs a forward and a backward pass with a graph, up to ``NewtonErrorDescent.cg_steps``
Hessian-vector products (about two backward passes each) and the line search's forward passes,
so it is for the strong nudge: PC-Nudge's weak one converges at its first-order start with
``error``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .inference import ROUNDING_ALLOWANCE  # machine epsilons a trial may rise by (of E_b + lam max|x_L| here)
from .solvers import SOLVERS, ErrorCoordinates, ErrorDescent, Iteration



def _per_sample_dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum((u * v).flatten(1).sum(1) for u, v in zip(a, b))


def _per_sample(vector: Tensor, like: Tensor) -> Tensor:
    """A per-sample vector (shape (B,)) shaped to broadcast against ``like`` (B, ...)."""
    return vector.reshape(-1, *([1] * (like.dim() - 1)))


def _scaled(values: list[Tensor], scale: Tensor) -> list[Tensor]:
    """Each sample's part of every tensor times its entry of ``scale`` (shape (B,))."""
    return [v * _per_sample(scale, v) for v in values]


@dataclass
class NewtonErrorCoordinates(ErrorCoordinates):
    """The errors, moved by a truncated Newton step with a line search per sample."""

    cg_steps: int = 20
    #: per sample, the Levenberg-Marquardt damping mu of the model H + mu P (None: not started)
    damping: Tensor | None = None

    def per_sample_energies(self, state, errors: list[Tensor]) -> tuple[Tensor, Tensor]:
        """E_b at the errors ``errors``, the layers evaluated afresh from the clamped input
        (differentiable when the errors are), and the size its rounding is relative to:
        E_b + lam max |x_L|, as a loss near 0 computed from large outputs (a confident
        cross-entropy) keeps only eps |x_L| of absolute precision."""
        energy = self.energy
        x = energy.first_input(state)
        internal = x.new_zeros(x.shape[0])
        for layer, error, precision in zip(energy.layers, errors, energy.precisions):
            x = layer(x) + error
            internal = internal + 0.5 * precision * error.flatten(1).pow(2).sum(1)
        output = energy.layers[-1](x)
        value = internal + state.lam * energy.loss.per_sample(output, state.targets)
        return value, value.detach().abs() + abs(state.lam) * output.detach().flatten(1).abs().amax(1)

    def moving_gradients(self, state) -> list[Tensor | None]:
        """None: ``move`` takes the gradients again, with their graph."""
        return [None] * (len(self.energy.layers) - 1)

    def move(self, state, directions: list[Tensor], step_size: float) -> None:
        """One Newton step (the module docstring); ``directions`` (the gradients) are recomputed
        with their graph."""
        leaves = [error.detach().requires_grad_(True) for error in self.errors(state)]
        with torch.enable_grad():
            start, scale = self.per_sample_energies(state, leaves)
            gradients = torch.autograd.grad(start.sum(), leaves, create_graph=True)
        if self.damping is None:
            self.damping = torch.zeros_like(start.detach())
        step = self._newton_direction(leaves, gradients)
        gradient = [g.detach() for g in gradients]
        base = [leaf.detach() for leaf in leaves]
        taken = self._line_search(state, base, step, start.detach(), scale, _per_sample_dot(gradient, step),
                                  step_size)
        # a sample whose model overshot (t < step) trusts it less next time, one that took the
        # whole step more (Levenberg 1944, Marquardt 1963)
        shortened = taken < step_size
        self.damping = torch.where(shortened, torch.clamp(self.damping * 10, min=1e-3),
                                   torch.where(self.damping > 1e-6, self.damping / 10, torch.zeros_like(self.damping)))

    def _newton_direction(self, leaves: list[Tensor], gradients: tuple[Tensor, ...]) -> list[Tensor]:
        """Preconditioned CG on H d = -g per sample, truncated at negative curvature."""
        inverse = [1.0 / p for p in self.energy.precisions]
        g = [gradient.detach() for gradient in gradients]
        residual = [-v for v in g]
        preconditioned = [r * s for r, s in zip(residual, inverse)]
        search = list(preconditioned)
        rz = _per_sample_dot(residual, preconditioned)
        size = _per_sample_dot(g, g).sqrt()
        target = torch.minimum(torch.full_like(size, 0.5), size.sqrt()) * size
        step = [torch.zeros_like(v) for v in g]
        active = size > 0
        for iteration in range(self.cg_steps):
            with torch.enable_grad():
                curvature_along = torch.autograd.grad(gradients, leaves, search, retain_graph=True)
            curvature_along = [h + d for h, d in zip(curvature_along, _scaled(
                [v * p for v, p in zip(search, self.energy.precisions)], self.damping))]
            curvature = _per_sample_dot(search, curvature_along)
            negative = active & (curvature <= 0)
            if iteration == 0:  # no direction of positive curvature yet: steepest descent
                step = [torch.where(_per_sample(negative, s), p, s) for s, p in zip(step, preconditioned)]
            active = active & ~negative
            if not bool(active.any()):
                break
            alpha = torch.where(active, rz / torch.where(active, curvature, torch.ones_like(curvature)),
                                torch.zeros_like(rz))
            step = [s + a for s, a in zip(step, _scaled(search, alpha))]
            residual = [r - a for r, a in zip(residual, _scaled(curvature_along, alpha))]
            active = active & (_per_sample_dot(residual, residual).sqrt() > target)
            if not bool(active.any()):
                break
            preconditioned = [r * s for r, s in zip(residual, inverse)]
            rz_next = _per_sample_dot(residual, preconditioned)
            beta = torch.where(active, rz_next / torch.where(rz > 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
            search = [p + b for p, b in zip(preconditioned, _scaled(search, beta))]
            rz = rz_next
        return step

    def _line_search(self, state, base: list[Tensor], step: list[Tensor], start: Tensor, scale: Tensor,
                     slope: Tensor, step_size: float) -> Tensor:
        """Backtrack t_b from ``step_size`` until each sample's energy falls enough (at most 40
        halvings; a sample that finds no such t keeps its errors), then set the errors; returns
        each sample's t."""
        t = torch.full_like(start, float(step_size))
        allowance = ROUNDING_ALLOWANCE * torch.finfo(start.dtype).eps * scale
        for _ in range(40):
            trial = [b + s for b, s in zip(base, _scaled(step, t))]
            value = self.per_sample_energies(state, trial)[0]
            failing = ~(value <= start + 1e-4 * t * slope + allowance)
            if not bool(failing.any()):
                break
            t = torch.where(failing, t / 2, t)
        else:
            t = torch.where(failing, torch.zeros_like(t), t)
            trial = [b + s for b, s in zip(base, _scaled(step, t))]
        for index, error in enumerate(trial, start=1):
            self.energy.set_error(state, index, error)
        return t


@dataclass
class NewtonErrorDescent(ErrorDescent):
    """Truncated Newton steps on the errors of a predictive-coding energy (the module
    docstring): for pc's strong nudge (lam = 1) on trained deep networks, where ``error`` and
    ``anderson`` stall.

    Attributes:
        cg_steps: conjugate-gradient iterations (Hessian-vector products) per step at most.
    """

    name: ClassVar[str] = "newton"
    check_every: ClassVar[int] = 1
    adaptive: ClassVar[bool] = False  # the line search is per sample, inside the step
    compiles: ClassVar[bool] = False  # autograd's Hessian-vector products and a host-read line search
    cg_steps: ClassVar[int] = 20

    def coordinates(self, energy) -> NewtonErrorCoordinates:
        super().coordinates(energy)  # the same refusal of other energies as ``error``
        return NewtonErrorCoordinates(energy, self.cg_steps)

    def start(self) -> Iteration:
        return Iteration()


SOLVERS[NewtonErrorDescent.name] = NewtonErrorDescent
