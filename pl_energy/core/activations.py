"""Elementwise activations with closed-form derivatives.

The fast layer path and the Hopfield energy need f' for an activation f without a trip through
autograd. Each activation module (its type and its settings: GELU's ``approximate``,
LeakyReLU's ``negative_slope``, Softplus's ``beta`` and ``threshold``) maps to

- ``derivative(pre, post)`` = f'(pre), with ``post = f(pre)``, and
- ``backward(cotangent, pre, post)`` = cotangent * f'(pre) as one fused kernel (aten's own
  ``*_backward`` ops), which is what a vector-Jacobian product needs on the hot path.

A module of a type or setting without a closed form here gets none, and its layer goes through
autograd. The names of ``ACTIVATIONS`` build torch's defaults (``leaky_relu``: slope 0.01;
``gelu``: the exact erf form; ``softplus``: beta 1, threshold 20).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

aten = torch.ops.aten


@dataclass(frozen=True)
class Derivatives:
    derivative: Callable[[Tensor, Tensor], Tensor]
    backward: Callable[[Tensor, Tensor, Tensor], Tensor]


class Clip(nn.Hardtanh):
    """rho(x) = min(max(x, 0), 1): the "hard sigmoid" of Scellier & Bengio 2017 and Laborieux et
    al. 2021, bounded with slope 1 in between (torch's ``Hardsigmoid`` has slope 1/6, which
    shrinks every layer's signal six-fold in a Hopfield network)."""

    def __init__(self) -> None:
        super().__init__(0.0, 1.0)


def _fixed(derivative: Callable[[Tensor, Tensor], Tensor],
           backward: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Callable[[nn.Module], Derivatives]:
    """The derivatives of a unit without settings."""
    derivatives = Derivatives(derivative, backward)
    return lambda module: derivatives


def _gelu(module: nn.GELU) -> Derivatives | None:
    """GELU (Hendrycks & Gimpel 2016), f(x) = x Phi(x): f'(x) = Phi(x) + x phi(x); with
    ``approximate="tanh"``, f(x) = x (1 + tanh u) / 2, u = sqrt(2/pi) (x + 0.044715 x^3):
    f'(x) = (1 + tanh u) / 2 + x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2."""
    approximate = module.approximate
    if approximate not in ("none", "tanh"):
        return None

    def derivative(pre: Tensor, post: Tensor) -> Tensor:
        if approximate == "none":
            return 0.5 * (1 + torch.erf(pre * math.sqrt(0.5))) + pre * torch.exp(-0.5 * pre * pre) / math.sqrt(2 * math.pi)
        tanh = torch.tanh(math.sqrt(2 / math.pi) * (pre + 0.044715 * pre ** 3))
        return 0.5 * (1 + tanh) + 0.5 * pre * (1 - tanh * tanh) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * pre * pre)

    return Derivatives(derivative, lambda c, pre, post: aten.gelu_backward(c, pre, approximate=approximate))


def _silu(pre: Tensor, post: Tensor) -> Tensor:
    """SiLU / swish (Elfwing et al. 2018), f(x) = x s(x): f'(x) = s(x) (1 + x (1 - s(x)))."""
    sigmoid = torch.sigmoid(pre)
    return sigmoid * (1 + pre * (1 - sigmoid))


def _leaky_relu(module: nn.LeakyReLU) -> Derivatives:
    """f(x) = x for x > 0, a x otherwise (a = ``negative_slope``): f' = 1 or a; a unit exactly on
    the kink takes a, as aten's leaky_relu_backward does."""
    slope = float(module.negative_slope)
    return Derivatives(lambda pre, post: torch.where(pre > 0, pre.new_ones(()), pre.new_full((), slope)),
                       lambda c, pre, post: aten.leaky_relu_backward(c, pre, slope, False))


def _softplus(module: nn.Softplus) -> Derivatives:
    """f(x) = log(1 + exp(b x)) / b, and x where b x > ``threshold`` (b = ``beta``):
    f'(x) = s(b x) there, 1 beyond the threshold."""
    beta, threshold = float(module.beta), float(module.threshold)
    return Derivatives(lambda pre, post: torch.where(pre * beta > threshold, 1.0, torch.sigmoid(pre * beta)),
                       lambda c, pre, post: aten.softplus_backward(c, pre, beta, threshold))


#: The closed-form derivatives of each activation type, read from a module's settings (None for
#: settings without one).
DERIVATIVES: dict[type[nn.Module], Callable[[nn.Module], Derivatives | None]] = {
    nn.ReLU: _fixed(lambda pre, post: (pre > 0).to(pre.dtype),
                    lambda c, pre, post: aten.threshold_backward(c, post, 0)),
    nn.Tanh: _fixed(lambda pre, post: 1 - post * post, lambda c, pre, post: aten.tanh_backward(c, post)),
    nn.Sigmoid: _fixed(lambda pre, post: post * (1 - post), lambda c, pre, post: aten.sigmoid_backward(c, post)),
    nn.Hardsigmoid: _fixed(lambda pre, post: ((pre > -3) & (pre < 3)).to(pre.dtype) / 6,
                           lambda c, pre, post: aten.hardsigmoid_backward(c, pre)),
    nn.Identity: _fixed(lambda pre, post: torch.ones_like(pre), lambda c, pre, post: c),
    Clip: _fixed(lambda pre, post: ((pre > 0) & (pre < 1)).to(pre.dtype),
                 lambda c, pre, post: aten.hardtanh_backward(c, pre, 0.0, 1.0)),
    nn.GELU: _gelu,
    nn.SiLU: _fixed(_silu, lambda c, pre, post: aten.silu_backward(c, pre)),
    nn.LeakyReLU: _leaky_relu,
    nn.Softplus: _softplus,
}

#: Units whose derivative read from the output of an in-place call is still right (f' is a
#: function of f(x)'s side of the kinks); any other unit applied in place overwrites the
#: pre-activation its derivative needs, so it gets none (autograd handles in-place calls).
_IN_PLACE_SAFE = (nn.ReLU, Clip)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
    "clip": Clip,
    "identity": nn.Identity,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
}


def make_activation(name: str) -> nn.Module:
    """Build the activation module called ``name`` (one of ``ACTIVATIONS``)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


def derivatives_of(module: nn.Module) -> Derivatives | None:
    """The closed-form derivatives of an elementwise activation module with its settings
    (GELU's ``approximate``, LeakyReLU's ``negative_slope``, Softplus's ``beta`` and
    ``threshold``), or None for an unknown type, setting or in-place call."""
    factory = DERIVATIVES.get(type(module))
    if factory is None or (getattr(module, "inplace", False) and not isinstance(module, _IN_PLACE_SAFE)):
        return None
    return factory(module)
