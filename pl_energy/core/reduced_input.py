"""Inference for the first hidden layer in the row space of the next layer's weights.

x_0 is clamped, so mu_1 = layer_1(x_0) never changes and eps_1 = x_1 - mu_1 enters the energy only
through pi_1/2 ||eps_1||^2 and layer 2's pre-activation a_2 = W_2 x_1 + b_2 (layer 2 dense). With
Q = f_2'(a_2) * (pi_2 eps_2) (or lam dL/dmu_2 when layer 2 is the output), one inference step is

    eps_1 <- eps_1 - (eta / pi_1) (pi_1 eps_1 - Q W_2).

Started at the free phase (eps_1 = 0), eps_1 stays of the form S W_2, and the step becomes

    S <- S - (eta / pi_1) (pi_1 S - Q),    a_2 = a_2(0) + S G,    G = W_2 W_2^T,

so each step costs one B x n_2 x n_2 product instead of the two B x n_1 x n_2 products of the
forward pass and the error feedback through layer 2; ||eps_1||^2 = sum(S * (S G)) comes for free.
This is the same dynamics in other coordinates (equal up to rounding); it pays off when the
one-off n_1 n_2^2 MACs of G are below the saving of T B n_2 (2 n_1 - n_2), i.e. when
T B (2 n_1 - n_2) > n_1 n_2; ``pays_off`` asks for twice that, a margin for the extra ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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

    def step(self, gradient: Tensor, scale: float) -> Tensor:
        """S -= scale * gradient; returns the new pre-activation a_2 of layer 2."""
        self.coordinates = torch.add(self.coordinates, gradient, alpha=-scale)
        self.projected = self.coordinates @ self.gram
        return self.start + self.projected

    def squared_error(self) -> Tensor:
        """||eps_1||^2 summed over the batch."""
        return (self.coordinates * self.projected).sum()

    def error(self) -> Tensor:
        """eps_1 = S W_2."""
        return self.coordinates @ self.weight
