"""Elementwise activations with closed-form derivatives.

The fast layer path and the Hopfield energy need f'(a) for an activation f without a trip
through autograd. Each entry maps a module type to ``derivative(pre, post) -> f'(pre)``, written
in terms of the pre-activation ``pre`` and the output ``post = f(pre)`` so that no value is
computed twice.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

Derivative = Callable[[Tensor, Tensor], Tensor]


def _relu(pre: Tensor, post: Tensor) -> Tensor:
    return (pre > 0).to(pre.dtype)


def _tanh(pre: Tensor, post: Tensor) -> Tensor:
    return 1 - post * post


def _sigmoid(pre: Tensor, post: Tensor) -> Tensor:
    return post * (1 - post)


def _hardsigmoid(pre: Tensor, post: Tensor) -> Tensor:
    return ((pre > -3) & (pre < 3)).to(pre.dtype) / 6


def _identity(pre: Tensor, post: Tensor) -> Tensor:
    return torch.ones_like(pre)


DERIVATIVES: dict[type[nn.Module], Derivative] = {
    nn.ReLU: _relu,
    nn.Tanh: _tanh,
    nn.Sigmoid: _sigmoid,
    nn.Hardsigmoid: _hardsigmoid,
    nn.Identity: _identity,
}

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
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


def derivative_of(module: nn.Module) -> Derivative | None:
    """The closed-form derivative of an elementwise activation module, or None if unknown."""
    return DERIVATIVES.get(type(module))
