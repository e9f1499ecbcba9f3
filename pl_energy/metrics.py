"""How close an update is to a reference gradient: the agreement metrics every part of pl_energy
reports (the ``GradientAgreement`` callback, the examples, the benchmarks).

For an update u and a reference r, over all their entries and in float64:

- ``cosine`` = u.r / (|u| |r|);
- ``rel_error`` = |u - r| / |r|;
- ``sign``: the fraction of entries with equal sign among those where both are non-zero (NaN when
  there are none): an exact zero (a dead ReLU unit's weights, a frozen row) has no sign, and
  counting it would report 0.745 for an update whose cosine is 0.99997;
- ``norm_ratio`` = |u| / |r|.

``layer_agreement`` gives the same metrics layer by layer and the worst layer: a global cosine of
0.9997 can hide a layer whose update is 100% off, because the global metrics are dominated by the
layers with the largest gradients.

Pure torch: no Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

METRICS = ("cosine", "rel_error", "sign", "norm_ratio")


def gradient_agreement(update: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> dict[str, float]:
    """The agreement metrics of two gradient dicts (keyed like ``named_parameters()``), over the
    reference's keys, accumulated tensor by tensor (no concatenated copy of a large network)."""
    dot = update_sq = reference_sq = difference_sq = 0.0
    same_sign = signed = 0
    for name, ref in reference.items():
        u, r = update[name].detach().double(), ref.detach().double()
        dot += float((u * r).sum())
        update_sq += float(u.pow(2).sum())
        reference_sq += float(r.pow(2).sum())
        difference_sq += float((u - r).pow(2).sum())
        both = (u != 0) & (r != 0)
        signed += int(both.sum())
        same_sign += int((torch.sign(u[both]) == torch.sign(r[both])).sum())
    tiny = torch.finfo(torch.float64).tiny
    norm_u, norm_r = math.sqrt(update_sq), math.sqrt(reference_sq)
    return {
        "cosine": dot / max(norm_u * norm_r, tiny),
        "rel_error": math.sqrt(difference_sq) / max(norm_r, tiny),
        "sign": same_sign / signed if signed else math.nan,
        "norm_ratio": norm_u / max(norm_r, tiny),
    }


def agreement_metrics(update: Tensor, reference: Tensor) -> dict[str, float]:
    """The agreement metrics of two flat vectors (see the module docstring)."""
    return gradient_agreement({"": update.flatten()}, {"": reference.flatten()})


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: the top-level child of the network, as the energies
    define layers (``"3.0.weight"`` is in layer ``"3"``)."""
    return name.split(".", 1)[0]


@dataclass(frozen=True)
class LayerAgreement:
    """The agreement metrics of each layer and the worst layer.

    Attributes:
        layers: layer name -> its metrics (``METRICS``), in the reference's order.
        worst_layer: the layer with the largest relative error.
        worst_rel_error: that layer's relative error, max_l |u_l - r_l| / |r_l|.
    """

    layers: dict[str, dict[str, float]]
    worst_layer: str
    worst_rel_error: float


def layer_agreement(update: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> LayerAgreement:
    """The agreement metrics of each layer (the parameters of one top-level child of the network,
    ``layer_of``), over the reference's keys: for layer l, ``rel_error`` = |u_l - r_l| / |r_l| and
    ``cosine`` = u_l.r_l / (|u_l| |r_l|) with u_l, r_l the layer's parameters' entries together; and
    the worst layer, the one with the largest relative error (a NaN counts as the worst)."""
    if not reference:
        raise ValueError("layer_agreement: the reference has no parameters to compare")
    names: dict[str, list[str]] = {}
    for name in reference:
        names.setdefault(layer_of(name), []).append(name)
    layers = {layer: gradient_agreement(update, {name: reference[name] for name in members})
              for layer, members in names.items()}
    worst = max(layers, key=lambda layer: math.inf if math.isnan(layers[layer]["rel_error"])
                else layers[layer]["rel_error"])
    return LayerAgreement(layers, worst, layers[worst]["rel_error"])
