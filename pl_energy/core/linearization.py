"""A layer linearised at a point: its output and the vector-Jacobian products the energies need.

For layer l with input x and parameters theta, ``linearize(layer, x)`` gives mu = layer(x) and

- ``input_vjp(c)`` = (d mu / d x)^T c  (the top-down error term of Millidge et al. 2022 Eq. 4),
- ``parameter_vjp(c)`` = (d mu / d theta)^T c  (the weight update of Millidge et al. 2022 Eq. 5, Song et al. 2020 Eq. 9),

Layers of the form ``Linear`` or ``Sequential(Linear, activation)`` use closed forms: with
a = W x + b and mu = f(a), input_vjp(c) = (f'(a) * c) W and parameter_vjp(c) gives
((f'(a) * c)^T x, sum_batch f'(a) * c). So do the layers of ``ResidualMLP`` (muPC's networks,
``core.residual``): with h = g(x) (g an activation, or none), mu = [x +] s (h W^T + b),

    input_vjp(c) = [c +] g'(x) * (s c W),   parameter_vjp(c) = (s c^T h, s sum_batch c).

These do only the matrix products the math needs. Any other layer goes through autograd on a
graph recorded once per linearisation point.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from collections.abc import Callable

from .activations import Derivatives, derivatives_of
from .networks import computes_as, describe
from .own_forward import computes_itself
from .residual import Residual, ScaledLinear


class DenseLayer:
    """A ``Linear``'s weight W, W^T and bias, detached once for the linearisations of one
    energy (an energy lives for one estimate: read at each use, they follow in-place updates
    but not a parameter replaced by another tensor)."""

    def __init__(self, linear: nn.Linear):
        self.weight = linear.weight.detach()
        self.transposed = self.weight.t()
        self.bias = None if linear.bias is None else linear.bias.detach()


class DenseLinearization:
    """``Linear`` followed by an optional elementwise activation, in closed form."""

    def __init__(self, linear: DenseLayer, derivatives: Derivatives | None,
                 activation: nn.Module | None, in_place: bool, x: Tensor | None, pre: Tensor | None = None):
        """Linearise at input x; a caller that already knows a = W x + b passes it as ``pre``
        (and may set ``x`` later: only ``parameter_vjp`` reads it). ``in_place``: the
        activation overwrites its input (``inplace=True``), so it gets a copy of a: a stays
        for the kinks of the free state (``core.kinks``)."""
        self.x = x
        self.weight = linear.weight
        self.has_bias = linear.bias is not None
        if pre is None:
            pre = torch.addmm(linear.bias, x, linear.transposed) if self.has_bias else x @ linear.transposed
        self.pre = pre
        self.output = pre if activation is None else activation(pre.clone() if in_place else pre)
        self.backward = None if derivatives is None else derivatives.backward

    def local(self, cotangent: Tensor) -> Tensor:
        """cotangent * f'(a), the cotangent of the pre-activation a."""
        return cotangent if self.backward is None else self.backward(cotangent, self.pre, self.output)

    def input_vjp(self, cotangent: Tensor) -> Tensor:
        return self.local(cotangent) @ self.weight

    def add_input_vjp(self, base: Tensor, cotangent: Tensor, alpha: float) -> Tensor:
        """base + alpha * input_vjp(cotangent), fused into one matrix product."""
        return torch.addmm(base, self.local(cotangent), self.weight, alpha=alpha)

    def parameter_vjp(self, cotangent: Tensor) -> list[Tensor]:
        return self._parameter_grads(self.local(cotangent))

    def vjp(self, cotangent: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(input_vjp, parameter_vjp) of one cotangent, sharing the work."""
        local = self.local(cotangent)
        return local @ self.weight, self._parameter_grads(local)

    def _parameter_grads(self, local: Tensor) -> list[Tensor]:
        grads = [local.t() @ self.x]
        if self.has_bias:
            grads.append(local.sum(0))
        return grads


class ScaledLinearization:
    """``[x +] s (g(x) W^T + b)`` in closed form: ``ScaledLinear``, ``Sequential(activation,
    ScaledLinear)`` and ``Residual(Sequential(activation, ScaledLinear))``."""

    def __init__(self, linear: ScaledLinear, derivatives: Derivatives | None,
                 activation: nn.Module | None, skip: bool, x: Tensor):
        self.x = x
        self.weight = linear.weight.detach()
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.scale, self.skip = linear.scale, skip
        self.hidden = x if activation is None else activation(x)
        self.backward = None if derivatives is None else derivatives.backward
        pre = self.hidden @ self.weight.t() if self.bias is None else torch.addmm(self.bias, self.hidden, self.weight.t())
        self.output = torch.add(x, pre, alpha=self.scale) if skip else pre * self.scale

    def _branch_input_vjp(self, cotangent: Tensor) -> Tensor:
        back = torch.mm(cotangent, self.weight) * self.scale
        return back if self.backward is None else self.backward(back, self.x, self.hidden)

    def input_vjp(self, cotangent: Tensor) -> Tensor:
        branch = self._branch_input_vjp(cotangent)
        return cotangent + branch if self.skip else branch

    def add_input_vjp(self, base: Tensor, cotangent: Tensor, alpha: float) -> Tensor:
        """base + alpha * input_vjp(cotangent)."""
        return torch.add(base, self.input_vjp(cotangent), alpha=alpha)

    def parameter_vjp(self, cotangent: Tensor) -> list[Tensor]:
        scaled = cotangent * self.scale
        grads = [scaled.t() @ self.hidden]
        if self.bias is not None:
            grads.append(scaled.sum(0))
        return grads

    def vjp(self, cotangent: Tensor) -> tuple[Tensor, list[Tensor]]:
        return self.input_vjp(cotangent), self.parameter_vjp(cotangent)


class AutogradLinearization:
    """Any layer: one recorded forward pass, then VJPs through autograd."""

    def __init__(self, layer: nn.Module, x: Tensor, needs_input_vjp: bool, in_place: bool = False):
        """``in_place``: the layer has a module that computes in place (``inplace=True``), which
        may overwrite its input: the layer gets a copy of x, so that the state x stays and the
        layer computes what it computes inside the network (a residual block whose branch
        starts with ``ReLU(inplace=True)`` adds the rectified input)."""
        self.parameters = [p for p in layer.parameters()]
        self.x = x.detach().requires_grad_(needs_input_vjp)
        version = self.x._version  # shared with x: an operation in place on x counts here
        with torch.enable_grad():
            try:
                self._graph_output = layer(self.x.clone() if in_place else self.x)
            except RuntimeError as error:
                if "leaf Variable that requires grad is being used in an in-place" not in str(error):
                    raise
                version = -1
        if self.x._version != version:
            raise ValueError(f"the layer {describe(layer)} overwrites its input in place (an operation in "
                             "place in its forward): an energy keeps each layer's input as a state; compute "
                             "it out of place (torch's modules: inplace=False)")
        self.output = self._graph_output.detach()

    def input_vjp(self, cotangent: Tensor) -> Tensor:
        (grad,) = torch.autograd.grad(self._graph_output, self.x, cotangent, retain_graph=True)
        return grad

    def add_input_vjp(self, base: Tensor, cotangent: Tensor, alpha: float) -> Tensor:
        """base + alpha * input_vjp(cotangent)."""
        return torch.add(base, self.input_vjp(cotangent), alpha=alpha)

    def parameter_vjp(self, cotangent: Tensor) -> list[Tensor]:
        return self._grads(cotangent, [])[1]

    def vjp(self, cotangent: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(input_vjp, parameter_vjp) of one cotangent in one backward pass."""
        return self._grads(cotangent, [self.x])

    def _grads(self, cotangent: Tensor, inputs: list[Tensor]) -> tuple[Tensor | None, list[Tensor]]:
        if not inputs and not self.parameters:
            return None, []
        grads = torch.autograd.grad(self._graph_output, inputs + self.parameters, cotangent,
                                    retain_graph=True, allow_unused=True)
        into = grads[0] if inputs else None
        params = grads[len(inputs):]
        # a parameter that enters through a reduction gets an expanded gradient (stride 0), which
        # the estimate's in-place arithmetic cannot write: its own memory then
        return into, [torch.zeros_like(p) if g is None else g.clone() if 0 in g.stride() else g
                      for p, g in zip(self.parameters, params)]


Linearization = DenseLinearization | ScaledLinearization | AutogradLinearization


#: The closed-form derivatives of an activation module, None where it has none.
DerivativesOf = Callable[[nn.Module], Derivatives | None]


def _linear_and_activation(layer: nn.Module, linear_type: type[nn.Module], activation_last: bool,
                           derivatives_of: DerivativesOf):
    """(linear, derivatives, activation) for ``linear_type`` alone or a ``Sequential`` of it and
    one activation with known derivatives (after it when ``activation_last``), else None."""
    if computes_as(layer, linear_type):
        return layer, None, None
    if computes_as(layer, nn.Sequential) and len(layer) == 2:
        linear, activation = (layer[0], layer[1]) if activation_last else (layer[1], layer[0])
        # the activation's call must be its own (no hooks) whichever derivatives are given: the
        # active set gives its pieces' slopes (``Pieces.derivatives``)
        own = computes_as(linear, linear_type) and computes_itself(activation)
        derivatives = derivatives_of(activation) if own else None
        if derivatives is not None:
            return linear, derivatives, activation
    return None


def dense_parts(layer: nn.Module, derivatives: DerivativesOf = derivatives_of):
    """(linear, derivatives, activation) when the layer has a closed form, else None."""
    return _linear_and_activation(layer, nn.Linear, True, derivatives)


def scaled_parts(layer: nn.Module, derivatives: DerivativesOf = derivatives_of):
    """(scaled linear, derivatives, activation, skip) for a layer of ``ResidualMLP``, else None."""
    skip = computes_as(layer, Residual) and layer.shortcut is None
    parts = _linear_and_activation(layer.branch if skip else layer, ScaledLinear, False, derivatives)
    if parts is None or computes_in_place(parts[2]):
        return None  # an activation in place overwrites the layer's input (and a block's skip): autograd
    return (*parts, skip)


def computes_in_place(module: nn.Module | None) -> bool:
    """Whether ``module`` or a module inside it is set to compute in place (``inplace=True``)."""
    if module is None:
        return False
    if not module._modules:  # a unit: no walk of a generator
        return bool(vars(module).get("inplace"))
    return any(bool(vars(inner).get("inplace")) for inner in module.modules())


class LayerLinearizer:
    """Picks the closed form or autograd once per layer; ``__call__`` linearises at a point."""

    def __init__(self, layer: nn.Module, needs_input_vjp: bool = True, derivatives: DerivativesOf = derivatives_of):
        """``derivatives``: the closed-form derivatives of an activation module, None for one
        without (its layer goes through autograd); by default the units' own, and a caller that
        replaced an activation's forward gives the replacement's (a closed form reads no slope
        the derivatives do not give)."""
        self.layer = layer
        self.needs_input_vjp = needs_input_vjp
        parts = dense_parts(layer, derivatives)
        self.parts = None if parts is None else (DenseLayer(parts[0]), *parts[1:], computes_in_place(parts[2]))
        self.scaled_parts = None if self.parts is not None else scaled_parts(layer, derivatives)
        self.in_place = self.parts is None and self.scaled_parts is None and computes_in_place(layer)

    def output_width(self) -> int | None:
        """The features of a closed form's output (its linear part's rows); None where the
        layer goes through autograd."""
        parts = self.parts if self.parts is not None else self.scaled_parts
        return None if parts is None else parts[0].weight.shape[0]

    def activation_input(self, linearization: Linearization) -> tuple[nn.Module, Tensor] | None:
        """(the activation module, the tensor it was applied to) in a closed-form
        linearisation of this layer; None where the closed form has no activation, or the
        layer goes through autograd."""
        if isinstance(linearization, DenseLinearization) and self.parts[2] is not None:
            return self.parts[2], linearization.pre
        if isinstance(linearization, ScaledLinearization) and self.scaled_parts[2] is not None:
            return self.scaled_parts[2], linearization.x
        return None

    def __call__(self, x: Tensor) -> Linearization:
        if self.parts is not None and x.dim() == 2:
            return DenseLinearization(*self.parts, x)
        if self.scaled_parts is not None and x.dim() == 2:
            return ScaledLinearization(*self.scaled_parts, x)
        return AutogradLinearization(self.layer, x, self.needs_input_vjp, self.in_place)
