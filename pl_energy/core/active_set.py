"""An active-set solve of a PC phase on a piecewise-linear network (ReLU, max-pooling).

A ReLU or max-pooling network is linear on each *piece*, a choice of active units and pooling
winners. The equilibrium of the nudged energy E(e) = sum_l pi_l/2 ||e_l||^2 + lam L(x_L(e)) is a
point e* whose own piece is the one it is an equilibrium of: on that piece E is smooth, its
gradient vanishes at e*, and every unit at e* lies on the side the piece says (the optimality
conditions of a piecewise-smooth energy at a point inside a piece). When the nudge moves units
across their kinks (a fixed lam such as the paper's 0.01), plain descent cycles across them and
only settles; this iteration solves the piece instead (a semismooth-Newton / active-set scheme,
cf. Hintermueller, Ito & Kunisch 2002):

1. read the piece of the current state: each ReLU unit's side (output > 0, the slope autograd
   gives at 0, and kinks pinned at the free state stay pinned: ``core.kinks``), each pooling
   window's winner;
2. freeze it: ReLU becomes x -> m * x and max-pooling the gather of the frozen winners, so the
   energy is smooth, and relax the phase to its tolerance there (the layers linearised by
   autograd: a closed form would read the slope off the output, which a frozen layer need not
   match);
3. read the piece of the new state: if no unit changed side, the state is an equilibrium of the
   true energy (its residual, measured on the true layers, is the frozen one's); else freeze the
   new piece and repeat, at most ``MAX_ROUNDS`` times.

A unit whose equilibrium lies exactly on its kink (a fractional Clarke slope) makes the pieces
cycle; the solve then gives up, the phase keeps the state descent settled at, and the report
says settled. ``ActiveSetResult.changed`` counts the units (ReLU units, pooling windows) whose
side the rounds changed in all, the report's ``pieces_changed``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_ROUNDS = 8


class _Piece:
    """One ReLU or ``MaxPool2d``: its forward as it was (observing the piece of each call), or
    with a frozen piece."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.previous = module.__dict__.get("forward")  # a pin of ``core.kinks``, or None
        self.frozen: Tensor | None = None
        self.observed: Tensor | None = None

    def _forward(self, x: Tensor) -> Tensor:
        return type(self.module).forward(self.module, x) if self.previous is None else self.previous(x)

    def __call__(self, x: Tensor) -> Tensor:
        if self.frozen is not None:
            return self._frozen(x)
        output = self._forward(x)
        self.observed = self._read(x, output)
        return output


class _ReLUPiece(_Piece):
    def _read(self, x: Tensor, output: Tensor) -> Tensor:
        return output > 0

    def _frozen(self, x: Tensor) -> Tensor:
        return x * self.frozen


class _MaxPoolPiece(_Piece):
    def _read(self, x: Tensor, output: Tensor) -> Tensor:
        m = self.module
        losers = getattr(getattr(self.previous, "pin", None), "losers", None)
        candidates = x if losers is None else x.masked_fill(losers, -torch.inf)
        return F.max_pool2d(candidates, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                            return_indices=True)[1]

    def _frozen(self, x: Tensor) -> Tensor:
        winners = self.frozen
        return x.flatten(-2).gather(-1, winners.flatten(-2)).view(winners.shape)


class Pieces:
    """The ReLU and ``MaxPool2d`` layers of a network, observed or frozen (a context manager)."""

    def __init__(self, network: nn.Module):
        self.pieces = [(_MaxPoolPiece if isinstance(m, nn.MaxPool2d) else _ReLUPiece)(m)
                       for m in network.modules() if _supported(m)]

    @classmethod
    def of(cls, network: nn.Module) -> "Pieces | None":
        """The pieces of a network made of units this module handles, None otherwise: no ReLU or
        max-pooling at all, a module used at several places (one piece per call is not one per
        module), a pooling layer pinned in window form (overlapping windows)."""
        uses = Counter(id(m) for _, m in network.named_modules(remove_duplicate=False))
        pieces = cls(network)
        shared = any(uses[id(piece.module)] > 1 for piece in pieces.pieces)
        unfolded = any(isinstance(piece, _MaxPoolPiece) and piece.previous is not None
                       and not getattr(piece.previous.pin, "tiles", True) for piece in pieces.pieces)
        return None if not pieces.pieces or shared or unfolded else pieces

    def __enter__(self) -> "Pieces":
        for piece in self.pieces:
            piece.module.forward = piece
        return self

    def __exit__(self, *exc) -> None:
        for piece in self.pieces:
            if piece.previous is None:
                del piece.module.forward
            else:
                piece.module.forward = piece.previous

    def freeze(self) -> None:
        """Freeze each layer's piece at its latest call."""
        for piece in self.pieces:
            piece.frozen = piece.observed

    def observe(self) -> None:
        for piece in self.pieces:
            piece.frozen = None

    def frozen_pieces(self) -> list[Tensor | None]:
        return [piece.frozen for piece in self.pieces]

    def changed_since(self, frozen: list[Tensor | None]) -> int:
        """Units whose piece at the latest (observed) calls differs from ``frozen``."""
        counts = [(piece.observed != before).sum() for piece, before in zip(self.pieces, frozen)
                  if before is not None and piece.observed is not None]
        return int(torch.stack(counts).sum()) if counts else 0


def _supported(module: nn.Module) -> bool:
    return type(module) is nn.ReLU or (isinstance(module, nn.MaxPool2d) and not module.return_indices)


@dataclass
class ActiveSetResult:
    """How the active-set solve ended: ``consistent`` (the last piece was the state's own, and
    the phase converged on it), the steps of its relaxations, the rounds, and ``changed``, the
    units whose side the rounds changed in all."""

    consistent: bool
    steps: int
    rounds: int
    changed: int


def relinearize(energy, state) -> None:
    """Evaluate every layer again at the state's errors (the errors are the variables: x_l =
    mu_l + e_l from the bottom up, with ``energy``'s layers as they compute now)."""
    errors = [e.clone() for e in energy.errors(state)]
    state.linearizations[0] = energy.linearizers[0](state.activities[0])
    for index, error in enumerate(errors, start=1):
        energy.set_error(state, index, error)


def solve_on_pieces(energy, frozen_energy, state, pieces: Pieces,
                    relax_piece: Callable[[object, object], object]) -> ActiveSetResult:
    """The iteration of the module docstring on ``state`` (in place; on success it is in
    ``energy``'s layers); ``relax_piece(energy, state)`` relaxes one phase and returns its
    ``InferenceReport``. On failure the caller restores the state."""
    steps = changed = 0
    with pieces:
        pieces.observe()
        relinearize(energy, state)
        for rounds in range(1, MAX_ROUNDS + 1):
            pieces.freeze()
            frozen = pieces.frozen_pieces()
            relinearize(frozen_energy, state)
            report = relax_piece(frozen_energy, state)
            steps += report.steps
            pieces.observe()
            relinearize(energy, state)
            moved = pieces.changed_since(frozen)
            changed += moved
            if moved == 0:
                return ActiveSetResult(bool(report.converged), steps, rounds, changed)
    return ActiveSetResult(False, steps, MAX_ROUNDS, changed)
