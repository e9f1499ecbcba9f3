"""How close an update is to a reference gradient: the agreement metrics every part of pl_energy
reports (the ``GradientAgreement`` callback, the examples, the benchmarks).

For an update u and a reference r, over all their entries and in float64:

- ``cosine`` = u.r / (|u| |r|);
- ``rel_error`` = |u - r| / |r|;
- ``sign``: the fraction of entries with equal sign among those where both are non-zero (NaN when
  there are none): an exact zero (a dead ReLU unit's weights, a frozen row) has no sign, and
  counting it would report 0.745 for an update whose cosine is 0.99997;
- ``norm_ratio`` = |u| / |r|.

Pure torch: no Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

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
