"""Gradients as the algorithms hand them over: backprop's by autograd (the reference), per-layer
lists named like ``network.named_parameters()``, and the relative error of one against another."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.losses import Loss, class_indices
from ..core.networks import computes_as, feedforward
from ..core.solvers import norms
from ..core.structure import structure_of


def backprop_gradients(network: nn.Module, inputs: Tensor, targets: Tensor,
                       loss: Loss) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Plain autograd: (gradients, output, loss value)."""
    named = [(name, p) for name, p in structure_of(network).named_parameters if p.requires_grad]
    # bp's own estimate runs with grad mode on; a reference may be asked for under no_grad
    with contextlib.nullcontext() if torch.is_grad_enabled() else torch.enable_grad():
        try:
            output = network(inputs)
        except RuntimeError:
            if computes_as(network, nn.Sequential):
                # again layer by layer, so that a shape error names the layer (the energy algorithms' way)
                feedforward(list(network.children()), inputs)
            raise
        if loss.name == "cross_entropy" and targets.dim() == 1:
            targets = class_indices(targets, output)  # no one-hot: checked indices
        else:
            targets = loss.prepare_targets(targets, output)
        value = loss.value(output, targets)
        # nothing trainable: no gradient to take (as the energy algorithms give none)
        grads = torch.autograd.grad(value, [p for _, p in named], allow_unused=True) if named else ()
    gradients = {
        name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(named, grads)
    }
    return gradients, output.detach(), value.detach()


def layer_relative_errors(network: nn.Module, estimate: list[list[Tensor]],
                          reference: list[list[Tensor]]) -> dict[str, float]:
    """||u_l - r_l|| / ||r_l|| per layer over its trainable parameters (frozen ones are not
    trained, so their error is nobody's), keyed by the layer's name among ``network``'s
    children; a layer whose reference is 0 reads |u_l| (0 when both vanish), a layer without
    trainable parameters is left out. The norms are taken in the parameters' dtype and read back
    once; the per-layer sums of squares are formed in float64. ``reference`` is overwritten with
    r_l - u_l (its own memory: no weight-sized temporaries)."""
    layout = ErrorLayout.of(network)
    if not layout.names:
        return {}
    return layout.errors(layout.norms(estimate, reference).tolist())


@dataclass(frozen=True)
class ErrorLayout:
    """Which parameters ``layer_relative_errors`` compares and whose layer each is, read off the
    network once, so that the norms (``norms``, on the device: a compiled graph takes them with
    no host read) and the ratios (``errors``, from the norms read back) can be taken apart.

    Attributes:
        names: the layers with trainable parameters, by their names among the children.
        kept: per child, the positions of its trainable parameters in ``layer.parameters()``.
        owners: per compared parameter, its layer's index in ``names``.
    """

    names: tuple[str, ...]
    kept: tuple[tuple[int, ...], ...]
    owners: tuple[int, ...]

    @classmethod
    def of(cls, network: nn.Module) -> "ErrorLayout":
        """The layout of ``network``'s children and their trainable parameters now."""
        structure = structure_of(network)
        names, kept, owners = [], [], []
        for (name, _), parameters in zip(structure.children, structure.child_parameters):
            positions = tuple(index for index, p in enumerate(parameters) if p.requires_grad)
            kept.append(positions)
            if positions:
                owners += [len(names)] * len(positions)
                names.append(name)
        return cls(tuple(names), tuple(kept), tuple(owners))

    def norms(self, estimate: list[list[Tensor]], reference: list[list[Tensor]]) -> Tensor:
        """||r - u|| then ||r|| of every compared parameter, stacked (``reference`` becomes
        r - u)."""
        upper = [layer[index] for layer, positions in zip(estimate, self.kept) for index in positions]
        lower = [layer[index] for layer, positions in zip(reference, self.kept) for index in positions]
        sizes = norms(lower)
        torch._foreach_sub_(lower, upper)
        return torch.stack([*norms(lower), *sizes])

    def errors(self, norms: list[float]) -> dict[str, float]:
        """The per-layer relative errors from ``norms`` read back."""
        squares = [[0.0, 0.0] for _ in self.names]  # per layer: ||u_l - r_l||^2, ||r_l||^2
        for owner, difference, size in zip(self.owners, norms, norms[len(self.owners):]):
            squares[owner][0] += difference * difference
            squares[owner][1] += size * size
        ratios = [math.sqrt(difference) / math.sqrt(size) if size > 0 else math.sqrt(difference)
                  for difference, size in squares]
        return dict(zip(self.names, ratios))


def name_layer_gradients(network: nn.Module, per_layer: list[list[Tensor]]) -> dict[str, Tensor]:
    """Turn per-layer gradient lists (in ``layer.parameters()`` order) into a dict keyed like
    ``network.named_parameters()``.

    A parameter used by several layers (tied weights) is listed once there, under its first
    name, and gets the sum of every use's gradient, as backprop gives it. Frozen parameters
    (``requires_grad=False``) are left out, as backprop leaves them out.
    """
    structure = structure_of(network)
    names = {id(parameter): name for name, parameter in structure.named_parameters}
    gradients: dict[str, Tensor] = {}
    for (child, _), parameters, grads in zip(structure.children, structure.child_parameters, per_layer):
        if len(parameters) != len(grads):
            raise RuntimeError(f"layer {child} has {len(parameters)} parameters but {len(grads)} gradients")
        for parameter, grad in zip(parameters, grads):
            if parameter.requires_grad:
                name = names[id(parameter)]
                gradients[name] = gradients[name] + grad if name in gradients else grad
    return gradients
