"""Elementwise activations with closed-form derivatives.

The fast layer path and the Hopfield energy need f' for an activation f without a trip through
autograd. Each activation module type maps to

- ``derivative(pre, post)`` = f'(pre), with ``post = f(pre)``, and
- ``backward(cotangent, pre, post)`` = cotangent * f'(pre) as one fused kernel (aten's own
  ``*_backward`` ops), which is what a vector-Jacobian product needs on the hot path.
"""

from __future__ import annotations

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


DERIVATIVES: dict[type[nn.Module], Derivatives] = {
    nn.ReLU: Derivatives(lambda pre, post: (pre > 0).to(pre.dtype),
                         lambda c, pre, post: aten.threshold_backward(c, post, 0)),
    nn.Tanh: Derivatives(lambda pre, post: 1 - post * post,
                         lambda c, pre, post: aten.tanh_backward(c, post)),
    nn.Sigmoid: Derivatives(lambda pre, post: post * (1 - post),
                            lambda c, pre, post: aten.sigmoid_backward(c, post)),
    nn.Hardsigmoid: Derivatives(lambda pre, post: ((pre > -3) & (pre < 3)).to(pre.dtype) / 6,
                                lambda c, pre, post: aten.hardsigmoid_backward(c, pre)),
    nn.Identity: Derivatives(lambda pre, post: torch.ones_like(pre), lambda c, pre, post: c),
    Clip: Derivatives(lambda pre, post: ((pre > 0) & (pre < 1)).to(pre.dtype),
                      lambda c, pre, post: aten.hardtanh_backward(c, pre, 0.0, 1.0)),
}

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
    "clip": Clip,
    "identity": nn.Identity,
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
    """The closed-form derivatives of an elementwise activation module, or None if unknown."""
    return DERIVATIVES.get(type(module))
