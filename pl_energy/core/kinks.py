"""Units on a kink at the free state keep the slope autograd gives them in every nudged state.

A piecewise-linear network has kinks: a ReLU unit whose pre-activation is exactly 0, a
max-pooling window whose largest entries are exactly equal. On MNIST they are not rare: the
blank margin of a digit gives identical convolution outputs across a pooling window, and at
initialisation of VGG-5 at 1/4 width about two thirds of the first layer's 2x2 windows are
exact ties. Backprop takes one side of each kink by convention: autograd's ReLU has slope 0 at
0 (``threshold_backward``), and max-pooling sends the whole gradient to the first maximal entry
of the window (row-major order). A nudged equilibrium breaks every such tie by the sign of its
own displacement, however small the nudge, so (i) the difference quotient's limit at a tie is a
one-sided derivative, not autograd's, and (ii) a tie whose winner loses under the nudge has no
equilibrium on either side: the state cycles across the kink and inference only settles.

``kinks_pinned(network)`` fixes the convention once, at the first call of each ReLU and
``MaxPool2d`` in it (the free state, the feedforward pass of predictive coding): the units
exactly on a kink there keep autograd's side in every later call, as if the free state had been
moved onto that side by a delta much larger than any nudge (lam << delta -> 0, taken in that
order). Concretely, a ReLU unit with pre-activation exactly 0 stays inactive (output 0, slope 0)
and, in a window whose maxima tie, only autograd's winner may win among the tied entries (the
others can still lose or win against the window's untied entries, which compare as usual). At
the free state this is the same function with the same gradient as the plain layers (for
finite inputs; windows that overlap may sum a gradient in another order), so
backprop, the reference, is unchanged; the limit lam -> 0 of the nudged estimate is then
backprop's gradient with autograd's slopes, and a nudged phase has an equilibrium to converge to
wherever the nudge crosses no other kink.

A layer with no unit on a kink at the free state gets its own forward back at once (no
cost, nothing changed). Units that are not on a kink at the free state but that a nudge moves
across one (a pre-activation within the displacement of 0, a runner-up within it of the maximum)
are not pinned: there the nudged equilibrium is a different linear piece, or on the kink. At the
automatic nudge of the error solvers (one rounding unit of the state: ``core.nudge``) that does
not happen in practice; at a fixed lam it can, and descent then only settles: the phase is
then solved on its linear pieces (``core.active_set``, which also finds equilibria that sit on
a kink the nudge reached), and the estimate's own error says by how much its update moved
(``Estimate.error_bound`` is measured against autograd's slopes). Other
piecewise-linear units (leaky_relu, hardtanh, hardsigmoid), pooling layers other than
``MaxPool2d`` without ``ceil_mode``, subclasses of ReLU and MaxPool2d and modules whose forward
was replaced on the instance are left as they are. Compiled whole-graph solver steps
(``core.compiled_steps``) run eagerly in a batch with pinned kinks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .structure import structure_of


class _Pin:
    """A layer's forward with the kinks of the free state pinned: ``record`` reads them off the
    free state (and returns the plain output there), ``__call__`` evaluates a later state;
    ``kinks`` counts the units ``record`` found on a kink (a 0-dim tensor, read by
    ``KinkPins.fix`` for all layers at once)."""

    kinks: Tensor

    def record(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class _PinnedReLU(_Pin):
    """ReLU whose units at exactly 0 at the free state stay inactive. ``record`` only counts
    them (``count_nonzero``: a third of the time of ``(x == 0).sum()``); their mask is formed
    at the first pinned call, which only a layer with units on a kink gets. A ReLU set to
    compute in place writes its output into x, as it does unpinned (a residual block whose
    branch starts with it adds the rectified input)."""

    def __init__(self, in_place: bool):
        self.in_place = in_place

    def record(self, x: Tensor) -> Tensor:
        self.free = x.clone() if self.in_place else x
        self.kinks = _zeros(x)
        return F.relu(x, inplace=self.in_place)

    @functools.cached_property
    def on_kink(self) -> Tensor:
        return self.free == 0

    def __call__(self, x: Tensor) -> Tensor:
        output = F.relu(x).masked_fill(self.on_kink, 0.0)
        return x.copy_(output) if self.in_place else output


class _PinnedMaxPool2d(_Pin):
    """``MaxPool2d`` whose tied maxima in the first call keep autograd's winner."""

    def __init__(self, module: nn.MaxPool2d):
        self.module = module
        kernel, stride, padding, dilation = self.geometry = pool_geometry(module)
        #: windows that tile the input without overlap or padding: the losers can be masked in
        #: the input's own layout and pooled natively
        self.tiles = tiles(module)

    def record(self, x: Tensor) -> Tensor:
        output, winners = F.max_pool2d(x, *self.geometry, return_indices=True)
        if self.tiles:
            (kh, kw), (h, w) = self.geometry[0], output.shape[-2:]
            window_max = torch.full_like(x, torch.inf)  # entries outside every window never lose
            window_max[..., :h * kh, :w * kw] = output.repeat_interleave(kh, -2).repeat_interleave(kw, -1)
            won = torch.zeros_like(x, dtype=torch.bool).flatten(-2).scatter_(-1, winners.flatten(-2), True)
            self.losers = (x == window_max) & ~won.view_as(x)
        else:
            windows, _ = self._windows(x)
            first = windows.argmax(1, keepdim=True)  # the first maximum, as max-pooling picks it
            tied = windows == windows.amax(1, keepdim=True)
            self.losers = tied & (torch.arange(windows.shape[1], device=x.device)[:, None] != first)
        self.kinks = self.losers.sum()
        return output

    def __call__(self, x: Tensor) -> Tensor:
        if self.tiles:
            return F.max_pool2d(x.masked_fill(self.losers, -torch.inf), *self.geometry)
        windows, shape = self._windows(x)
        winners = windows.masked_fill(self.losers, -torch.inf).argmax(1, keepdim=True)
        return windows.gather(1, winners).reshape(shape)

    def _windows(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """(N*C, k*k, L): each output position's window, the padding at -inf as max-pooling pads
        it; and the output's shape."""
        kernel, stride, padding, dilation = self.geometry
        padded = F.pad(x.reshape(-1, 1, *x.shape[-2:]), (padding[1], padding[1], padding[0], padding[0]),
                       value=-torch.inf)
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1
                for n, k, s, p, d in zip(x.shape[-2:], kernel, stride, padding, dilation)]
        return F.unfold(padded, kernel, dilation=dilation, stride=stride), (*x.shape[:-2], *size)


def pool_geometry(module: nn.MaxPool2d) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, padding, dilation) of a 2-d pooling layer, each a pair."""
    return tuple(_pair(v) for v in (module.kernel_size, module.kernel_size if module.stride is None else module.stride,
                                    module.padding, module.dilation))


def tiles(module: nn.MaxPool2d) -> bool:
    """Whether the pooling windows tile the input: stride = kernel, no padding or dilation."""
    kernel, stride, padding, dilation = pool_geometry(module)
    return stride == kernel and padding == (0, 0) and dilation == (1, 1)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _pin_for(module: nn.Module) -> _Pin | None:
    """A pin for PyTorch's own ReLU and MaxPool2d (not a subclass, not a module whose forward
    was replaced on the instance: their function is not the one a pin computes)."""
    if "forward" in module.__dict__:
        return None
    if type(module) is nn.MaxPool2d and not module.ceil_mode and not module.return_indices:
        return _PinnedMaxPool2d(module)
    return _PinnedReLU(module.inplace) if type(module) is nn.ReLU else None


def _zeros(x: Tensor) -> Tensor:
    """The entries of x exactly 0 (a 0-dim count)."""
    return x.numel() - torch.count_nonzero(x)


def units_on_kink(module: nn.Module, x: Tensor) -> Tensor | None:
    """The units a pin of ``module`` would find on a kink at its input x (``KinkPins``), counted
    without pinning and without a host read (a compiled graph counts, its caller reads): for a
    pinned ``ReLU`` the entries of x exactly 0; None for a module no pin watches. Max-pooling
    is refused: its pins are not traced."""
    pin = _pin_for(module)
    if pin is None:
        return None
    if not isinstance(pin, _PinnedReLU):
        raise TypeError(f"units_on_kink counts ReLU kinks only, not {type(module).__name__}'s")
    return _zeros(x)


def pin_of(module: nn.Module) -> _Pin | None:
    """The pin a module computes through now, if any."""
    slot = module.__dict__.get("forward")
    return slot.pin if isinstance(slot, _Slot) else None


def has_pins(layers) -> bool:
    """Whether any module of ``layers`` computes through a pin now (a pin is not traced by
    ``torch.compile``, so whole-graph compiled steps cannot contain one)."""
    return any(pin_of(module) is not None for layer in layers for module in layer.modules())


class KinkPins:
    """The pinned layers of one network for one batch (see the module docstring).

    Until ``fix`` the layers compute as usual and each records its first call (the free state);
    ``fix`` pins what they found. A layer called more than once before ``fix`` (one module used
    at several places) or not at all, and a layer with no unit on a kink, gets its own forward
    back: pinning is only ever a change at units exactly on a kink of the free state.

    Attributes:
        on_kink: units found on a kink at the free state, per pinned layer (ReLU units at
            exactly 0, tied entries of a pooling window other than autograd's winner).
    """

    def __init__(self, network: nn.Module):
        self.on_kink: dict[nn.Module, int] = {}
        self.fixed = False
        self._slots: dict[nn.Module, _Slot] = {}
        for _, module in structure_of(network).named_modules(network):
            pin = _pin_for(module)
            if pin is not None:
                # the instance's own attribute, as ``module.forward = slot`` sets it (without
                # nn.Module.__setattr__'s checks for parameters, buffers and submodules)
                module.__dict__["forward"] = self._slots[module] = _Slot(self, module, pin)

    def fix(self) -> None:
        """The free state is computed: pin the kinks it found (one read back for all layers)."""
        self.fixed = True
        recorded = [module for module, slot in self._slots.items() if slot.calls == 1]
        counts = torch.stack([self._slots[module].pin.kinks for module in recorded]).tolist() if recorded else []
        self.on_kink = {module: count for module, count in zip(recorded, counts) if count}
        for module in list(self._slots):
            if module not in self.on_kink:
                self._release(module)

    def _release(self, module: nn.Module) -> None:
        del self._slots[module]
        del module.__dict__["forward"]

    def release(self) -> None:
        """Give every layer still pinned its own forward back."""
        for module in list(self._slots):
            self._release(module)


class _Slot:
    """A pinned layer's forward. The compiler does not trace into it (it holds per-batch
    state), so a compiled layer that contains one breaks its graph there (only layers with units
    on a kink keep one after ``KinkPins.fix``)."""

    def __init__(self, pins: KinkPins, module: nn.Module, pin: _Pin):
        self.pins, self.module, self.pin = pins, module, pin
        self.calls = 0  # before ``fix``: a layer called more than once is one module used twice

    @torch.compiler.disable
    def __call__(self, x: Tensor) -> Tensor:
        if self.pins.fixed:
            return self.pin(x)
        self.calls += 1
        return self.pin.record(x) if self.calls == 1 else type(self.module).forward(self.module, x)


@contextmanager
def kinks_pinned(network: nn.Module) -> Iterator[KinkPins]:
    """Watch the network's ReLU and ``MaxPool2d`` layers for kinks at their next call (the free
    state), pinned once the caller says ``fix()``, for as long as the context lasts; the layers'
    own forwards come back after it."""
    pins = KinkPins(network)
    try:
        yield pins
    finally:
        pins.release()
