"""Couplings: what joins two layers of activity in a layered Hopfield energy.

Layer l of a Hopfield network is a coupling g_l followed by an elementwise activation rho_l, and
the energy couples rho_l(x_l) to g_l(rho_{l-1}(x_{l-1})):

    E = sum_l c_l [ 1/2 ||x_l||^2 - rho_l(x_l) . g_l(rho_{l-1}(x_{l-1})) ] (+ beta L)

For a dense layer g_l(u) = W_l u + b_l (Scellier & Bengio 2017). For a convolutional layer
g_l(u) = P(W_l * u + b_l), P a max- or average-pool: the "primitive function" of Ernoult et al.
2019 and Laborieux et al. 2021. Inference and learning need, at a point u = rho(x_{l-1}):

- ``forward(u)`` = g(u), layer l's bottom-up net input;
- ``add_transpose(base, u, v, alpha)`` = base + alpha J_g(u)^T v, the top-down input that layer
  l - 1 receives from v = rho(x_l) (a transposed convolution, with the pooling's switches);
- ``parameter_vjp(u, v)`` = (dg(u)/dtheta)^T v, the Hebbian weight gradient.

A coupling is made of affine maps (``Linear``, convolutions) and positively homogeneous,
piecewise-linear reshapes and pools, so every layer's energy stays the Hopfield bilinear form
piece by piece; an activation or a stateful layer inside it (BatchNorm, Dropout) is refused.
``DenseCoupling`` writes a ``Linear`` in closed form; ``ModuleCoupling`` takes any allowed
stack through ``torch.func`` (so that corrected CHL can take forward-mode derivatives of it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp

from .activations import DERIVATIVES
from .linearization import DenseLayer
from .networks import forward_of


class LatestPoint:
    """What a coupling computed at its latest point u, recognised by identity and by the version
    counters of u and of the parameters (an in-place change of either, such as an optimiser's
    step, makes it another point): the energy watch, the residual check and a VJP at the same
    state share one forward pass."""

    def __init__(self, parameters: tuple[Tensor, ...]):
        self.parameters = parameters
        self._point: tuple | None = None  # (u, versions, value)

    def _versions(self, u: Tensor) -> tuple[int, ...]:
        return (u._version, *(p._version for p in self.parameters))

    def get(self, u: Tensor):
        """The value kept at u, None where u is not the latest point."""
        point = self._point
        return point[2] if point is not None and point[0] is u and point[1] == self._versions(u) else None

    def keep(self, u: Tensor, value):
        self._point = (u, self._versions(u), value)
        return value


#: Modules a coupling may be built of: affine maps, reshapes and pools.
COUPLING_PARTS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Flatten, nn.Unflatten, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
)


class DenseCoupling:
    """g(u) = W u + b in closed form: only the matrix products the energy needs.

    The weights are read as constants of inference once, when the coupling is built (an energy
    lives for one batch: ``linearization.DenseLayer``'s detached views, which an optimiser's
    in-place step still shows through). The net input g(u) is kept for the latest u
    (``LatestPoint``). Not for an energy kept across a replacement of the parameters' storage
    (``p.data = ...``, ``network.double()``): build a new one.
    """

    def __init__(self, linear: nn.Linear):
        self.module = linear
        dense = DenseLayer(linear)
        self.weight, self.transposed, self.bias = dense.weight, dense.transposed, dense.bias
        self._latest = LatestPoint(tuple(p for p in (self.weight, self.bias) if p is not None))

    def forward(self, u: Tensor) -> Tensor:
        output = self._latest.get(u)
        if output is not None:
            return output
        if self.bias is not None and u.dim() == 2:
            output = torch.addmm(self.bias, u, self.transposed)  # what linear runs, without its transpose
        else:
            output = torch.nn.functional.linear(u, self.weight, self.bias)
        return self._latest.keep(u, output)

    def add_transpose(self, base: Tensor, u: Tensor, v: Tensor, alpha: float) -> Tensor:
        """base + alpha v W (J_g does not depend on u)."""
        if base.dim() == 2:
            return torch.addmm(base, v, self.weight, alpha=alpha)
        return torch.add(base, v @ self.weight, alpha=alpha)

    def parameter_vjp(self, u: Tensor, v: Tensor) -> list[Tensor]:
        """(v^T u, sum_batch v): one product over every sample (and phase) stacked in ``u``."""
        v2, u2 = v.reshape(-1, v.shape[-1]), u.reshape(-1, u.shape[-1])
        grads = [v2.t() @ u2]
        if self.module.bias is not None:
            grads.append(v2.sum(0))
        return grads


class ModuleCoupling:
    """Any stack of ``COUPLING_PARTS`` (convolution, pooling, flattening, linear).

    Inference asks, at the same point u = rho(x_{l-1}), for the top-down input of layer l - 1
    (a VJP, which runs g forward) and then for layer l's net input g(u): the VJP's forward pass
    is kept for the latest u (``LatestPoint``), so a full gradient costs one forward and one
    backward pass per coupling.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self._latest = LatestPoint(tuple(module.parameters()))  # (g(u), pullback)

    def _parameters(self) -> dict[str, Tensor]:
        """The parameters as constants of inference (no graph reaches the weights)."""
        return {name: p.detach() for name, p in self.module.named_parameters()}

    def forward(self, u: Tensor) -> Tensor:
        point = self._latest.get(u)
        if point is not None:
            return point[0]
        with torch.no_grad():
            return self.module(u)

    def add_transpose(self, base: Tensor, u: Tensor, v: Tensor, alpha: float) -> Tensor:
        point = self._latest.get(u)
        if point is None:
            params = self._parameters()
            point = self._latest.keep(u, vjp(lambda below: functional_call(self.module, params, (below,)), u.detach()))
        (transposed,) = point[1](v)
        return torch.add(base, transposed, alpha=alpha)

    def parameter_vjp(self, u: Tensor, v: Tensor) -> list[Tensor]:
        params = self._parameters()
        if not params:
            return []
        _, pullback = vjp(lambda p: functional_call(self.module, p, (u,)), params)
        (grads,) = pullback(v)
        return [grads[name] for name in params]


Coupling = DenseCoupling | ModuleCoupling


def split_layer(layer: nn.Module, activations: tuple[type[nn.Module], ...]) -> tuple[nn.Module, nn.Module | None]:
    """(coupling, activation) of a layer: a trailing elementwise activation of one of the types
    ``activations`` is rho_l; everything before it is g_l (the whole layer when there is none)."""
    if isinstance(layer, nn.Sequential) and len(layer) >= 2 and isinstance(layer[-1], activations):
        parts = list(layer.children())
        return (parts[0] if len(parts) == 2 else nn.Sequential(*parts[:-1])), parts[-1]
    return layer, None


def make_coupling(module: nn.Module, index: int) -> Coupling:
    """The coupling for ``module`` (layer ``index`` without its activation), or a TypeError that
    names the part that cannot couple two layers of a Hopfield energy."""
    # hooks do not act in a Hopfield energy (warned about by ``hopfield.check_own_forwards``)
    if forward_of(module, nn.Linear):
        return DenseCoupling(module)
    leaves = [m for m in module.modules() if not list(m.children())] or [module]
    for leaf in leaves:
        if not any(forward_of(leaf, part) for part in COUPLING_PARTS):
            raise TypeError(
                f"layer {index} has a {type(leaf).__name__} inside it: a layer of the Hopfield energy of "
                "EP/CHL is affine maps, reshapes and pools (Linear, Conv, Flatten, MaxPool, AvgPool) "
                "followed by one activation at its end, e.g. Sequential(Conv2d, MaxPool2d, Clip) or "
                f"Sequential(Flatten, Linear), the activation one of {', '.join(t.__name__ for t in DERIVATIVES)}; "
                "other activations, activations elsewhere and stateful layers (BatchNorm, Dropout) have "
                "no Hopfield energy")
    return ModuleCoupling(module)
