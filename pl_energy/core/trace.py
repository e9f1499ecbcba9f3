"""The record of one inference phase: energy components per step (Millidge et al. 2022 Fig. 2A)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class InferenceTrace:
    """Energy components at every inference step, step 0 being the starting state.

    ``internal`` is I, ``supervised`` the loss L at the output and ``total`` E = I + lam * L
    (Millidge et al. 2022 Eq. 10), all batch means. ``steps`` is the number of steps actually taken (fewer
    than asked when the tolerance stopped inference early). One row per step, the first being the
    state inference started from and the last the final state; where an active-set solve ended a
    phase (``core.active_set``), the last row is its solution, after the rows of the descent
    before it (its rounds are not steps of the dynamics), and ``steps`` is the report's: the
    descent's steps and those of the relaxations on the pieces, so the rows are then fewer than
    ``steps`` + 1.
    """

    internal: Tensor
    supervised: Tensor
    total: Tensor
    steps: int
    converged: bool

    @classmethod
    def from_rows(cls, rows: list[tuple[Tensor, Tensor, Tensor]], converged: bool,
                  steps: int | None = None) -> "InferenceTrace":
        internal, supervised, total = (torch.stack(column).detach() for column in zip(*rows))
        steps = len(rows) - 1 if steps is None else steps
        return cls(internal, supervised, total, steps=steps, converged=converged)

    def then(self, rest: "InferenceTrace | tuple[Tensor, Tensor, Tensor]", steps: int,
             converged: bool) -> "InferenceTrace":
        """This trace followed by ``rest``: the trace of a phase that went on from this one's last
        state (its first row, that state again, is dropped), or one row (I, L, E) of the state
        the phase ended at; ``steps`` and ``converged`` those of the whole phase."""
        if isinstance(rest, InferenceTrace):
            more = (rest.internal[1:], rest.supervised[1:], rest.total[1:])
        else:
            more = tuple(value.detach().reshape(1) for value in rest)
        internal, supervised, total = (torch.cat([mine, theirs]) for mine, theirs in
                                       zip((self.internal, self.supervised, self.total), more))
        return InferenceTrace(internal, supervised, total, steps=steps, converged=converged)

    def as_dict(self) -> dict[str, list[float]]:
        return {
            "internal": self.internal.tolist(),
            "supervised": self.supervised.tolist(),
            "total": self.total.tolist(),
        }
