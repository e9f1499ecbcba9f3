"""A speed path of fixed-step descent on the PC energy: the first hidden layer in the row space of
the next layer's weights.

x_0 is clamped, so mu_1 = layer_1(x_0) never changes and eps_1 = x_1 - mu_1 enters the energy only
through pi_1/2 ||eps_1||^2 and layer 2's pre-activation a_2 = W_2 x_1 + b_2 (layer 2 dense). With
Q = f_2'(a_2) * (-d_2) (d_2 = dE/dmu_2: -pi_2 eps_2, or lam dL/dmu_2 when layer 2 is the output),
one inference step is

    eps_1 <- eps_1 - (eta / pi_1) (pi_1 eps_1 - Q W_2).

Started at the free phase (eps_1 = 0), eps_1 stays of the form S W_2, and the step becomes

    S <- S - (eta / pi_1) (pi_1 S - Q),    a_2 = a_2(0) + S G,    G = W_2 W_2^T,

so each step costs one B x n_2 x n_2 product instead of the two B x n_1 x n_2 products of the
forward pass and the error feedback through layer 2; ||eps_1||^2 = sum(S * (S G)) comes for free.
This is the same dynamics in other coordinates (equal up to rounding). It pays off when the
one-off n_1 n_2^2 MACs of G are below the saving of T B n_2 (2 n_1 - n_2), i.e. when
T B (2 n_1 - n_2) > n_1 n_2; ``pays_off`` asks for twice that, a margin for the extra ops.

The energy knows nothing of it: ``FirstLayerInRowSpace`` is the ``faster_coordinates`` of the
``gd`` solver (``pl_energy.core.solvers``), which ``relax`` asks for only when nobody watches the
steps (the residual is defined in the plain coordinates).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .linearization import DenseLinearization
from .moves import descend, divide
from .predictive_coding import PCState, PredictiveCodingEnergy
from .solvers import ActivityCoordinates


@dataclass
class ReducedFirstLayer:
    """x_1 = mu_1 + S W_2 while inference runs; ``projected`` = S G = eps_1 W_2^T."""

    weight: Tensor
    gram: Tensor
    start: Tensor
    coordinates: Tensor
    projected: Tensor

    @classmethod
    def at_free_phase(cls, weight: Tensor, start: Tensor) -> "ReducedFirstLayer":
        zeros = torch.zeros_like(start)
        return cls(weight, weight @ weight.t(), start, zeros, zeros)

    @staticmethod
    def pays_off(batch: int, steps: int, width_1: int, width_2: int) -> bool:
        return steps * batch * (2 * width_1 - width_2) > 2 * width_1 * width_2

    def move(self, gradient: Tensor, scale: float | Tensor) -> Tensor:
        """S -= scale * gradient; returns the new pre-activation a_2 of layer 2."""
        self.coordinates = descend(self.coordinates, gradient, scale)
        self.projected = self.coordinates @ self.gram
        return self.start + self.projected

    def squared_error(self) -> Tensor:
        """||eps_1||^2 summed over the batch."""
        return (self.coordinates * self.projected).sum()

    def error(self) -> Tensor:
        """eps_1 = S W_2."""
        return self.coordinates @ self.weight


@dataclass
class FirstLayerInRowSpace(ActivityCoordinates):
    """Descent on the activities of a PC energy with eps_1 = S W_2 moved as S.

    While these coordinates are in use the state's x_1 stays at mu_1 (so the energy's own terms
    see eps_1 = 0) and S carries eps_1; ``leave`` writes x_1 = mu_1 + S W_2 back. A snapshot of
    the state taken meanwhile lacks S, so these coordinates serve only solvers that never go
    back to one (fixed-step descent, not adaptive). Use ``FirstLayerInRowSpace.around`` to get
    them only where they apply and pay off.
    """

    energy: PredictiveCodingEnergy
    reduced: ReducedFirstLayer | None = None

    @classmethod
    def around(cls, energy, state, steps: int) -> FirstLayerInRowSpace | None:
        """These coordinates for ``steps`` steps from ``state`` if it is a PC energy's free phase
        with a dense second layer and they save work; else None."""
        # exactly the PC energy: a subclass may change the terms these coordinates re-derive
        if type(energy) is not PredictiveCodingEnergy or len(energy.layers) < 2:
            return None
        second = state.linearizations[1]
        if (not isinstance(second, DenseLinearization)
                or state.activities[1] is not state.linearizations[0].output):  # not at the free phase
            return None
        batch, width_1 = state.activities[1].shape
        if not ReducedFirstLayer.pays_off(batch, steps, width_1, second.pre.shape[1]):
            return None
        return cls(energy, ReducedFirstLayer.at_free_phase(second.weight, second.pre))

    def gradients(self, state: PCState) -> list[Tensor]:
        """[pi_1 S + f_2'(a_2) * d_2] (the gradient in S), then dE/dx_l for l >= 2."""
        upper, above, alpha = self.energy.top_down(state, lowest=2)
        first = torch.add(self.energy.local_terms(state, [self.reduced.coordinates])[0],
                          state.linearizations[1].local(above), alpha=alpha)
        return [first, *upper]

    def local_terms(self, state: PCState) -> list[Tensor]:
        raise NotImplementedError("the residual is measured in the plain coordinates: relax "
                                  "measures it after leave(), with ActivityCoordinates")

    def move(self, state: PCState, directions: list[Tensor], step_size: float | Tensor) -> None:
        energy = self.energy
        pre = self.reduced.move(directions[0], divide(step_size, energy.precisions[0]))
        state.linearizations[1] = DenseLinearization(*energy.linearizers[1].parts, None, pre=pre)
        energy.move_activities(state, directions[1:], step_size, lowest=2)

    def components(self, state: PCState) -> tuple[Tensor, Tensor, Tensor]:
        internal, supervised, total = self.energy.components(state)  # eps_1 = 0 in the state
        first = 0.5 * self.energy.precisions[0] * self.reduced.squared_error() / state.activities[0].shape[0]
        return internal + first, supervised, total + first

    def leave(self, state: PCState) -> None:
        if self.reduced is None:
            return
        state.activities[1] = state.linearizations[0].output + self.reduced.error()
        state.linearizations[1].x = state.activities[1]
        self.reduced = None
