"""Small comparisons shared by the core tests."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def layer_distances(estimate: dict[str, Tensor], other: dict[str, Tensor], network) -> dict[str, float]:
    """||estimate_l - other_l|| / ||other_l|| per top-level layer (its parameters' names start
    with the layer's), written here, independently of ``layer_relative_errors``."""
    distances = {}
    for name, layer in network.named_children():
        keys = [f"{name}.{key}" for key, _ in layer.named_parameters()]
        if keys:
            difference = math.sqrt(sum(float((estimate[k] - other[k]).norm()) ** 2 for k in keys))
            distances[name] = difference / math.sqrt(sum(float(other[k].norm()) ** 2 for k in keys))
    return distances


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


def paper_energy(network: nn.Sequential, inputs, activities, targets, lam: float):
    """Millidge et al. 2022 Eqs. 3 and 10 with cross-entropy: sum_l 1/2 ||x_l - f_l(x_{l-1})||^2
    over the hidden layers plus lam CE(f_L(x_{L-1}), y), summed over the batch."""
    layers = list(network)
    below = [inputs, *activities]
    internal = sum(0.5 * (x - layer(prev)).pow(2).sum() for layer, prev, x in zip(layers, below, activities))
    return internal + lam * F.cross_entropy(layers[-1](below[-1]), targets, reduction="sum")


def autograd_activity_gradients(network, inputs, activities, targets, lam):
    xs = [x.detach().requires_grad_(True) for x in activities]
    return torch.autograd.grad(paper_energy(network, inputs, xs, targets, lam), xs)


def papers_update(network: nn.Sequential, inputs, targets, lam: float, steps: int, step_size: float) -> dict[str, Tensor]:
    """The papers' inference and update written from their equations (Millidge et al. 2022 A.1):
    from the feedforward pass, ``steps`` steps of x <- x - step_size dE/dx (autograd of
    ``paper_energy``), then (1/lam) dE/dtheta of the batch mean, named like the parameters."""
    with torch.no_grad():
        activities = []
        x = inputs
        for layer in list(network)[:-1]:
            x = layer(x)
            activities.append(x)
    for _ in range(steps):
        gradients = autograd_activity_gradients(network, inputs, activities, targets, lam)
        activities = [x - step_size * g for x, g in zip(activities, gradients)]
    names, parameters = zip(*network.named_parameters())
    energy = paper_energy(network, inputs, activities, targets, lam) / (lam * inputs.shape[0])
    return dict(zip(names, torch.autograd.grad(energy, parameters)))
