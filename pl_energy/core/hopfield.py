"""The layered Hopfield energy of EP and CHL (seed 003 Eq. 8; Scellier & Bengio 2017).

For layers l = 1..L with weights W_l, biases b_l and nonlinearities rho_l (rho_0 = identity on
the clamped input x_0), with feedback strength gamma weighting layer l by c_l = gamma^(l-1):

    E = sum_l c_l [ 1/2 ||x_l||^2 - rho_l(x_l)^T (W_l rho_{l-1}(x_{l-1}) + b_l) ] + beta * L(x_L, y)

    dE/dx_l = c_l [x_l - rho_l'(x_l) h_l] - c_{l+1} rho_l'(x_l) (W_{l+1}^T rho_{l+1}(x_{l+1}))
              (+ beta dL/dx_L at the output),  h_l = W_l rho_{l-1}(x_{l-1}) + b_l
    dE/dW_l = -c_l rho_l(x_l) rho_{l-1}(x_{l-1})^T,   dE/db_l = -c_l rho_l(x_l)

Inference steps are preconditioned by 1/c_l, so at every layer the top-down input is weighted
by gamma relative to the bottom-up one (Xie & Seung 2003; seed 003 Eq. 18). With gamma = 1 this
is Scellier & Bengio's energy. The layers are those of ``mlp``: ``Linear`` or
``Sequential(Linear, activation)``; a plain ``Linear`` output layer has rho_L = identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .activations import DERIVATIVES
from .linearization import dense_parts
from .losses import Loss
from .networks import feedforward, layers_of


@dataclass
class HopfieldState:
    """Activities x_0..x_L; the output is free unless ``clamped``."""

    activities: list[Tensor]
    targets: Tensor | None
    beta: float = 0.0
    clamped: bool = False
    input_drive: Tensor | None = None

    @property
    def output(self) -> Tensor:
        return self.activities[-1]


class HopfieldEnergy:
    """Layered Hopfield energy over the ``Linear`` layers of an MLP."""

    def __init__(self, network: nn.Module, loss: Loss, gamma: float = 1.0):
        self.layers = layers_of(network)
        self.loss = loss
        if not gamma > 0:
            raise ValueError(f"gamma (feedback strength) must be > 0, got {gamma}")
        self.gamma = float(gamma)
        self.linears: list[nn.Linear] = []
        self.rhos: list[nn.Module | None] = []
        for index, layer in enumerate(self.layers, start=1):
            parts = dense_parts(layer)
            if parts is None:
                raise TypeError(
                    f"layer {index} ({type(layer).__name__}) is not Linear or Sequential(Linear, "
                    f"activation) with an activation in {[t.__name__ for t in DERIVATIVES]}; the "
                    "Hopfield energy of EP/CHL needs layered dense networks such as pl_energy.mlp"
                )
            self.linears.append(parts[0])
            self.rhos.append(parts[2])
        self.weights = [self.gamma ** index for index in range(len(self.layers))]

    def _value(self, index: int, x: Tensor) -> Tensor:
        """rho_l(x) for layer l (index 0 is the input: identity)."""
        rho = self.rhos[index - 1] if index > 0 else None
        return x if rho is None else rho(x)

    def _slope(self, index: int, x: Tensor, value: Tensor) -> Tensor | None:
        """rho_l'(x), or None where rho_l is the identity."""
        rho = self.rhos[index - 1] if index > 0 else None
        return None if rho is None else DERIVATIVES[type(rho)].derivative(x, value)

    # --- states -------------------------------------------------------------------------------
    def free_state(self, inputs: Tensor, targets: Tensor | None) -> HopfieldState:
        """Starts from the network's feedforward pass; relax it to reach the free equilibrium.

        ``targets`` may be None for prediction (the free phase does not read them).
        """
        if inputs.dim() != 2:
            raise ValueError(f"the Hopfield energy takes flat inputs (B, features), got {tuple(inputs.shape)}")
        with torch.no_grad():
            activities = feedforward(self.layers, inputs)
        if targets is not None:
            targets = self.loss.prepare_targets(targets, activities[-1])
        return HopfieldState(activities, targets)

    def snapshot(self, state: HopfieldState) -> HopfieldState:
        return HopfieldState(list(state.activities), state.targets, state.beta, state.clamped,
                             state.input_drive)

    def restore(self, state: HopfieldState, snapshot: HopfieldState) -> None:
        state.activities[:] = snapshot.activities

    def begin(self, state: HopfieldState, steps: int) -> None:
        """Nothing to prepare: every layer is free (or clamped) as it is."""

    def finish(self, state: HopfieldState) -> None:
        """Nothing to write back."""

    def nudged(self, state: HopfieldState, beta: float) -> HopfieldState:
        return HopfieldState(list(state.activities), state.targets, beta=beta,
                             input_drive=state.input_drive)

    def clamped(self, state: HopfieldState) -> HopfieldState:
        """Output clamped to x_L - dL/dx_L (the target itself for ``mse``)."""
        activities = list(state.activities)
        output = activities[-1]
        activities[-1] = output - self.loss.per_sample_gradient(output, state.targets)
        return HopfieldState(activities, state.targets, clamped=True, input_drive=state.input_drive)

    # --- the energy and its gradients ---------------------------------------------------------
    def activity_gradients(self, state: HopfieldState) -> list[Tensor]:
        """dE/dx_l = c_l [x_l - rho_l'(x_l) (h_l + gamma W_{l+1}^T rho_{l+1}(x_{l+1}))] (+ nudge)."""
        x = state.activities
        values = [self._value(index, value) for index, value in enumerate(x)]
        depth = len(self.layers)
        last = depth - 1 if state.clamped else depth
        gradients = []
        for index in range(1, last + 1):
            if index == 1:
                drive = self.input_drive(state)
            else:
                linear = self.linears[index - 1]
                drive = torch.nn.functional.linear(values[index - 1], linear.weight.detach(),
                                                   None if linear.bias is None else linear.bias.detach())
            if index < depth:
                drive = torch.addmm(drive, values[index + 1], self.linears[index].weight.detach(),
                                    alpha=self.gamma)
            slope = self._slope(index, x[index], values[index])
            gradient = x[index] - (drive if slope is None else slope * drive)
            if self.weights[index - 1] != 1.0:
                gradient = self.weights[index - 1] * gradient
            if index == depth and state.beta:
                gradient = torch.add(gradient, self.loss.per_sample_gradient(x[index], state.targets),
                                     alpha=state.beta)
            gradients.append(gradient)
        return gradients

    def local_terms(self, state: HopfieldState) -> list[Tensor]:
        """c_l x_l, the part of dE/dx_l from layer l's own 1/2 ||x_l||^2 (free layers only)."""
        last = len(self.layers) - 1 if state.clamped else len(self.layers)
        return [state.activities[index] if self.weights[index - 1] == 1.0
                else self.weights[index - 1] * state.activities[index] for index in range(1, last + 1)]

    def input_drive(self, state: HopfieldState) -> Tensor:
        """h_1 = W_1 x_0 + b_1: the input is clamped, so it is computed once per batch."""
        if state.input_drive is None:
            linear = self.linears[0]
            with torch.no_grad():
                state.input_drive = torch.nn.functional.linear(state.activities[0], linear.weight, linear.bias)
        return state.input_drive

    def step(self, state: HopfieldState, gradients: list[Tensor], step_size: float) -> None:
        for index, gradient in enumerate(gradients, start=1):
            state.activities[index] = state.activities[index] - (step_size / self.weights[index - 1]) * gradient

    def components(self, state: HopfieldState) -> tuple[Tensor, Tensor, Tensor]:
        """(I, L, I + beta L) as batch means."""
        with torch.no_grad():
            internal = self.internal_energy(state.activities, self.input_drive(state)) / state.activities[0].shape[0]
            supervised = (self.loss.value(state.output, state.targets) if state.targets is not None
                          else internal.new_zeros(()))
        return internal, supervised, internal + state.beta * supervised

    def internal_energy(self, activities: list[Tensor], input_drive: Tensor | None = None) -> Tensor:
        """Sum over the batch of I(x); differentiable in x and in the parameters (pass the
        clamped input's drive h_1 when it is known and no gradient through W_1 is needed)."""
        total = activities[0].new_zeros(())
        for index, linear in enumerate(self.linears, start=1):
            value = self._value(index, activities[index])
            if index == 1 and input_drive is not None:
                drive = input_drive
            else:
                drive = torch.nn.functional.linear(self._value(index - 1, activities[index - 1]),
                                                   linear.weight, linear.bias)
            layer = 0.5 * activities[index].pow(2).sum() - (value * drive).sum()
            total = total + self.weights[index - 1] * layer
        return total

    def parameter_gradients(self, state: HopfieldState, minus: HopfieldState | None = None,
                            scale: float = 1.0) -> list[list[Tensor]]:
        """scale * dE/dtheta of the batch-mean energy at ``state`` (minus that at ``minus``), per
        layer in ``parameters()`` order.

        dE/dW_l = -c_l rho(x_l)^T rho(x_{l-1}): a difference of two phases is one product of the
        phases stacked along the batch, so no weight-sized intermediate is formed.
        """
        phases = [(state, 1.0)] + ([(minus, -1.0)] if minus is not None else [])
        batch = state.activities[0].shape[0]
        grads = []
        for index, linear in enumerate(self.linears, start=1):
            factor = -self.weights[index - 1] * scale / batch
            above = torch.cat([self._value(index, phase.activities[index]) * (sign * factor)
                               for phase, sign in phases])
            below = torch.cat([self._value(index - 1, phase.activities[index - 1])
                               for phase, _ in phases])
            layer = [above.t() @ below]
            if linear.bias is not None:
                layer.append(above.sum(0))
            grads.append(layer)
        return grads
