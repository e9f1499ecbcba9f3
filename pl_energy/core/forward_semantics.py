"""One forward semantics per batch for layers with state: Dropout and BatchNorm in training mode.

Inference evaluates every layer many times per batch (once per step of a relaxing algorithm,
once more for the reference). A Dropout in training mode would draw a new mask at each call and
a BatchNorm renormalise with new batch statistics (and update its running statistics at every
call), so the energy would change under the solver. Inside ``fixed_forward(network)``:

- each Dropout draws its mask at its first call and applies that mask at every later call on an
  input of the same shape;
- each BatchNorm normalises its first input with that batch's statistics (updating its running
  statistics once, as one training forward pass does) and normalises every later input with the
  same statistics, held constant (so the layer is the affine map y = (x - m) / s * w + b of that
  batch).

The ``FixedForward`` it yields can be entered again (``replay``) to evaluate the network with the
same masks and statistics, e.g. for the BP reference of the same batch, which then
differentiates the same function (with the statistics as constants).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .structure import structure_of

class _FixedDropout:
    def __init__(self, module: nn.modules.dropout._DropoutNd):
        self.module = module
        self.mask: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        if self.mask is None or self.mask.shape != x.shape:
            keep = 1.0 - self.module.p
            self.mask = torch.bernoulli(torch.full_like(x.detach(), keep)) / keep if keep > 0 else torch.zeros_like(x)
        return x.mul_(self.mask) if self.module.inplace else x * self.mask  # in place as the module is


class _FixedBatchNorm:
    def __init__(self, module: nn.modules.batchnorm._BatchNorm, update_running: bool = True):
        self.module = module
        self.update_running = update_running
        self.statistics: tuple[Tensor, Tensor] | None = None

    def __call__(self, x: Tensor) -> Tensor:
        module = self.module
        if self.statistics is None:
            axes = [0] + list(range(2, x.dim()))
            with torch.no_grad():
                mean, var = x.mean(axes), x.var(axes, unbiased=False)
                self.statistics = (mean, var)
                if self.update_running and module.training and module.track_running_stats \
                        and module.running_mean is not None:
                    count = x.numel() // x.shape[1]
                    momentum = module.momentum if module.momentum is not None else 1.0 / float(
                        module.num_batches_tracked + 1)
                    module.running_mean.lerp_(mean, momentum)
                    module.running_var.lerp_(var * count / max(count - 1, 1), momentum)
                    module.num_batches_tracked += 1
        mean, var = self.statistics
        return F.batch_norm(x, mean, var, module.weight, module.bias, training=False, eps=module.eps)


def _stateful(module: nn.Module) -> bool:
    """A Dropout or BatchNorm in training mode, or a BatchNorm without running statistics (which
    normalises with each input's own statistics in eval mode too). Other dropout layers
    (channel-wise Dropout1d/2d/3d, AlphaDropout) in training mode are refused: a mask of their
    own kind is not implemented here, and an elementwise one would be another layer."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        if module.training and module.p > 0 and type(module) is not nn.Dropout:
            raise TypeError(
                f"{type(module).__name__} in training mode is not supported by the energy algorithms (its "
                "mask would change at every inference step, and only nn.Dropout's elementwise mask is held "
                "fixed per batch): use nn.Dropout, or put the layer in eval mode")
        return module.training and module.p > 0
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.training or module.running_mean is None
    return False


class _Fixable:
    """The forward of a stateful layer while batches are replayed: the innermost batch's fixed
    forward. One object per layer (``_FIXABLE``), installed at every replay, so that a compiled
    layer around it (``torch.compile``) sees the same function at every batch instead of a new
    one that would recompile it each time; the compiler does not trace into it (the fixed
    forwards hold per-batch state). Outside a replay the layer has its own forward again."""

    def __init__(self):
        self.fixed: list = []

    @torch.compiler.disable
    def __call__(self, x: Tensor) -> Tensor:
        return self.fixed[-1](x)


#: each stateful layer's ``_Fixable``, as long as the layer lives
_FIXABLE: "weakref.WeakKeyDictionary[nn.Module, _Fixable]" = weakref.WeakKeyDictionary()


class FixedForward:
    """The masks and statistics of one batch (see the module docstring)."""

    def __init__(self, network: nn.Module, update_running: bool = True):
        self.layers = {module: (_FixedDropout(module) if isinstance(module, nn.modules.dropout._DropoutNd)
                                else _FixedBatchNorm(module, update_running))
                       for _, module in structure_of(network).named_modules(network) if _stateful(module)}

    @contextmanager
    def replay(self) -> Iterator["FixedForward"]:
        """Evaluate the network's stateful layers with this batch's masks and statistics."""
        previous = {module: module.__dict__.get("forward") for module in self.layers}
        for module, fixed in self.layers.items():
            slot = _FIXABLE.setdefault(module, _Fixable())
            slot.fixed.append(fixed)
            module.forward = slot
        try:
            yield self
        finally:
            for module, before in previous.items():  # back to what was there (nested replays too)
                _FIXABLE[module].fixed.pop()
                if before is None:
                    del module.forward
                else:
                    module.forward = before


@contextmanager
def fixed_forward(network: nn.Module, update_running: bool = True) -> Iterator[FixedForward]:
    """Fix the masks and statistics of the network's stateful layers for one batch
    (``update_running=False``: leave BatchNorm's running statistics alone, for a measurement)."""
    frozen = FixedForward(network, update_running)
    with frozen.replay():
        yield frozen
