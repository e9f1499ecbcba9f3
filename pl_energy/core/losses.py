"""Supervised losses L(mu_L, y) at the output, with their gradient in closed form.

- ``"mse"``: 1/2 ||mu - y||^2 summed over outputs, mean over the batch (Song et al. 2020's clamped output).
- ``"cross_entropy"``: softmax cross-entropy, mean over the batch (Millidge et al. 2022 A.1).

Targets are class indices of shape (B,) or dense targets of the output's shape (one-hot or soft;
for ``cross_entropy`` each row a distribution). ``prepare_targets`` turns class indices into
one-hot vectors once, so that inference steps do no indexing. ``per_sample_gradient`` is dl/dmu for the
per-sample loss l (the batch mean's gradient times B): inference runs per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("mse", "cross_entropy")
#: Dense cross-entropy targets must sum to 1 within this many machine epsilons times the square
#: root of the number of classes (the rounding of a sum of C probabilities).
ROW_SUM_EPSILONS = 8


@dataclass(frozen=True)
class Loss:
    name: str

    def __post_init__(self):
        if self.name not in LOSSES:
            raise ValueError(f"unknown loss {self.name!r}; choose one of {list(LOSSES)}")

    def prepare_targets(self, targets: Tensor, output: Tensor) -> Tensor:
        """Check targets against the output and bring them to the form the loss uses."""
        if targets.dim() == 1:
            targets = class_indices(targets, output)  # checks the batch size too
            # one-hot (F.one_hot would check the range again, reading it back twice more)
            return output.new_zeros(output.shape).scatter_(1, targets.unsqueeze(1), 1.0)
        if targets.shape[:1] != output.shape[:1]:
            raise ValueError(
                f"targets have batch size {targets.shape[0] if targets.dim() else 'none'} "
                f"but the output has {output.shape[0]}"
            )
        if targets.shape != output.shape:
            raise ValueError(
                f"dense targets must have the output's shape {tuple(output.shape)}, "
                f"got {tuple(targets.shape)}"
            )
        targets = targets.to(output.dtype)
        if self.name == "cross_entropy":
            # the gradient softmax - t assumes rows that sum to 1: to rounding in the output's dtype
            tolerance = ROW_SUM_EPSILONS * targets.shape[-1] ** 0.5 * torch.finfo(targets.dtype).eps
            worst = (targets.sum(-1) - 1).abs().max().item() if targets.numel() else 0.0
            if not worst <= tolerance:
                raise ValueError(f"dense cross-entropy targets must be distributions over the last axis: each row "
                                 f"sums to 1 to rounding ({tolerance:.0e} in {targets.dtype}), here off by up to "
                                 f"{worst:.1e}; normalise them in the network's dtype: t = t / t.sum(-1, keepdim=True)")
        return targets

    def value(self, output: Tensor, targets: Tensor) -> Tensor:
        """Batch-mean loss (targets as returned by ``prepare_targets``)."""
        if self.name == "mse" or output.dim() != 2:
            return self.per_sample(output, targets).mean()
        return F.cross_entropy(output, targets)

    def per_sample(self, output: Tensor, targets: Tensor) -> Tensor:
        """Each sample's loss l, shape (B,) (cross-entropy with the classes on the last axis,
        as in ``per_sample_gradient``, summed over any other axes)."""
        if self.name == "mse":
            return 0.5 * (output - targets).pow(2).flatten(1).sum(1)
        return -(targets * F.log_softmax(output, dim=-1)).flatten(1).sum(1)

    def per_sample_gradient(self, output: Tensor, targets: Tensor) -> Tensor:
        """dl/dmu for each sample's loss l."""
        if self.name == "mse":
            return output - targets
        return softmax_last(output) - targets


def class_indices(targets: Tensor, output: Tensor) -> Tensor:
    """Class-index targets (B,) checked against an output (B, C) (integers in [0, C): one read
    back) as int64; one line naming the problem otherwise."""
    if (targets.dtype != torch.int64 or targets.dim() != 1 or output.dim() != 2
            or targets.shape[0] != output.shape[0]):
        targets = _index_form(targets, output)  # the common case (int64 labels, (B, C) output) skips it
    if targets.numel():
        low, high = torch.aminmax(targets)  # two reads of 0-dim results: cheaper than stacking them
        low, high = low.item(), high.item()
        if low < 0 or high >= output.shape[1]:
            raise ValueError(f"class indices must lie in [0, {output.shape[1]}), got [{low}, {high}]")
    return targets


def _index_form(targets: Tensor, output: Tensor) -> Tensor:
    """``targets`` as int64 class indices for ``output``, or one line naming the problem."""
    if targets.shape[:1] != output.shape[:1]:
        raise ValueError(f"targets have batch size {targets.shape[0] if targets.dim() else 'none'} "
                         f"but the output has {output.shape[0]}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"class-index targets must be integers (shape (B,)), got {targets.dtype}; dense "
                         f"targets have the output's shape {tuple(output.shape)}")
    if output.dim() != 2:
        raise ValueError(f"class-index targets need an output of shape (B, C), got {tuple(output.shape)}")
    return targets.long()  # any integer dtype (uint8, int32 from numpy or a file)


def softmax_last(output: Tensor) -> Tensor:
    """Softmax over the last axis. For a batch of few-class rows (e.g. 64 x 10) on a CPU,
    torch's kernel, which vectorises along the reduced axis, can be slower than the same softmax
    taken over the first axis of the transpose, so that form is used there; it is the same
    arithmetic. Measured (torch 2.14, one thread, 64 x 10): 10.1 against 4.8 us on an Intel Xeon,
    but 4.4 against 7.4 us on an AMD EPYC (AVX2), where it pays from 256 rows on. On a GPU the
    transposed form would add a copy kernel to a launch-bound step (softmax makes its input
    contiguous first, as the CPU profile shows) for no measured gain, so the plain softmax runs
    there."""
    if output.device.type == "cpu" and output.dim() == 2 and output.shape[1] <= 32 and output.shape[0] >= 8:
        return torch.softmax(output.t(), dim=0).t()
    return torch.softmax(output, dim=-1)


def as_loss(loss: str | Loss) -> Loss:
    return loss if isinstance(loss, Loss) else Loss(loss)
