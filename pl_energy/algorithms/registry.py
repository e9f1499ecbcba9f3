"""Algorithms by name: ``build_algorithm("pc_nudge", lam=0.01)``."""

from __future__ import annotations

import dataclasses
from typing import Any

from .backprop import Backprop
from .base import Algorithm
from .contrastive_hebbian import ContrastiveHebbian
from .equilibrium_propagation import EquilibriumPropagation
from .predictive_coding import PCNudge, PredictiveCoding
from .zero_divergence import FastZIL, ZeroDivergenceIL

REGISTRY: dict[str, type[Algorithm]] = {
    cls.name: cls
    for cls in (Backprop, PredictiveCoding, ZeroDivergenceIL, FastZIL, PCNudge,
                EquilibriumPropagation, ContrastiveHebbian)
}
ALGORITHMS: tuple[str, ...] = tuple(REGISTRY)


def hyperparameters_of(name: str) -> dict[str, Any]:
    """The hyper-parameters of algorithm ``name`` with their defaults."""
    cls = algorithm_class(name)
    return {field.name: field.default for field in dataclasses.fields(cls)}


def algorithm_class(name: str) -> type[Algorithm]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown algorithm {name!r}; valid algorithms are: {', '.join(ALGORITHMS)}"
        ) from None


def build_algorithm(name: str, **hparams: Any) -> Algorithm:
    """Instantiate algorithm ``name`` with hyper-parameters (unknown ones are rejected)."""
    cls = algorithm_class(name)
    valid = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(hparams) - valid)
    if unknown:
        raise TypeError(
            f"algorithm {name!r} has no hyper-parameter(s) {unknown}; its hyper-parameters are "
            f"{sorted(valid) or 'none'}"
        )
    return cls(**hparams)
