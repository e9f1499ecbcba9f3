"""Small comparisons shared by the core tests."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def flat(gradients: dict[str, Tensor]) -> Tensor:
    return torch.cat([g.flatten() for g in gradients.values()])


def max_relative(estimate: dict[str, Tensor], reference: dict[str, Tensor]) -> float:
    """max |estimate - reference| / max |reference| over all parameters."""
    assert estimate.keys() == reference.keys()
    diff = max((estimate[k] - reference[k]).abs().max().item() for k in reference)
    return diff / flat(reference).abs().max().item()


def relative_l2(estimate: dict[str, Tensor], reference: dict[str, Tensor]) -> float:
    a, b = flat(estimate), flat({k: reference[k] for k in estimate})
    return ((a - b).norm() / b.norm()).item()


def log_slope(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x): the order of a power law y ~ x^k."""
    x = torch.tensor([math.log(v) for v in xs])
    y = torch.tensor([math.log(v) for v in ys])
    x, y = x - x.mean(), y - y.mean()
    return float((x @ y) / (x @ x))


def cosine(estimate: dict[str, Tensor], reference: dict[str, Tensor]) -> float:
    a, b = flat(estimate), flat({k: reference[k] for k in estimate})
    return (a @ b / (a.norm() * b.norm())).item()


def eager_calls(modules) -> list:
    """A list that grows by one at every call of one of ``modules`` made outside a compiled graph
    (a forward pre-hook: Dynamo traces it away inside one)."""
    calls: list = []
    for module in modules:
        module.register_forward_pre_hook(
            lambda module, args: None if torch.compiler.is_compiling() else calls.append(module))
    return calls
