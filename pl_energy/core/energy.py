"""The energy protocol: what inference, solvers and algorithms need of an energy.

An energy E(x; theta) is a function of the activities x of a layered network (x_0 clamped to
the input) and of the network's parameters theta (Millidge et al. 2022, Eq. 10: E = I + lam L).
Its state holds the activities (and whatever the energy caches about them). Inference moves the
free activities to an equilibrium dE/dx = 0; learning reads dE/dtheta there.

``PredictiveCodingEnergy`` and ``HopfieldEnergy`` implement it; every solver of
``pl_energy.core.solvers`` that moves activities works on any implementation.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Energy(Protocol):
    """An energy over the activities of a layered network.

    Per-sample conventions: gradients with respect to activities are those of the energy summed
    over the batch (each sample relaxes on its own), components and parameter gradients those of
    the batch mean.
    """

    def free_state(self, inputs: Tensor, targets: Tensor | None):
        """The state inference starts from (the feedforward pass)."""

    def activity_gradients(self, state) -> list[Tensor]:
        """dE/dx_l for every free layer l, bottom to top."""

    def local_terms(self, state) -> list[Tensor]:
        """The part of each dE/dx_l that comes from layer l's own term (the residual's scale)."""

    def move_activities(self, state, directions: list[Tensor], step_size: float) -> None:
        """x_l <- x_l - step_size * P_l * direction_l, P_l the energy's per-layer preconditioner."""

    def components(self, state) -> tuple[Tensor, Tensor, Tensor]:
        """(I, L, E) at the state, batch means."""

    def snapshot(self, state):
        """A copy of the state that ``restore`` can go back to (tensors are never changed in place)."""

    def restore(self, state, snapshot) -> None:
        """Put ``state`` back to ``snapshot``."""

    def nudged(self, state, strength: float):
        """A copy of ``state`` that relaxes under the energy with its supervised term weighted by
        ``strength`` (lam for PC, beta for Hopfield energies): the nudge lives in the state."""

    def parameter_gradients(self, state, scale: float = 1.0) -> list[list[Tensor]]:
        """scale * dE/dtheta of the batch-mean energy per layer, in ``layer.parameters()`` order.
        An energy may also offer ``parameter_gradient_difference(state, minus, scale)``, the
        contrast of two of its states in one pass (``algorithms.contrastive.contrast`` uses it)."""
