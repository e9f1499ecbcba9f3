"""An active-set solve of a PC phase on a piecewise-linear network (ReLU, max-pooling).

A network of piecewise-linear units (ReLU, leaky ReLU, hardtanh / clip, hardsigmoid: ``Kinks``)
and max-pooling is linear on each *piece*, a choice of each unit's side of its kinks and each
pooling window's winner. The equilibrium of the nudged energy E(e) = sum_l pi_l/2 ||e_l||^2 + lam L(x_L(e)) is a
point e* whose own piece is the one it is an equilibrium of: on that piece E is smooth, its
gradient vanishes at e*, and every unit at e* lies on the side the piece says. When the nudge
moves units across their kinks (a fixed lam such as the paper's 0.01), plain descent cycles
across them and only settles; this iteration solves the pieces instead (an active-set /
semismooth-Newton scheme, cf. Hintermueller, Ito & Kunisch 2002):

1. read the piece of the current state: each unit's side (at a kink, the side whose slope
   autograd gives there; kinks pinned at the free state stay pinned: ``core.kinks``), each
   pooling window's winner;
2. freeze it: a unit becomes the affine map of its side and max-pooling a gather of the frozen
   winners, so the energy is smooth, and relax the phase to its tolerance there (a ``Linear``
   and its unit in closed form with the frozen slopes, ``Pieces.derivatives``; other layers by
   autograd);
3. read the piece of the new state; repeat until no unit changes side, at most ``MAX_ROUNDS``.

**Units whose equilibrium is on their kink.** A unit can lose on both sides: frozen active, the
equilibrium puts a ReLU's pre-activation a below 0; frozen inactive, above 0. No piece is then
consistent and the plain iteration cycles. The equilibrium lies on the kink, a = 0, with a
fractional slope s in [0, 1]: 0 is in the convex hull of the two one-sided gradients (Clarke's
generalised gradient), the optimality condition of a piecewise-smooth energy at a kink. A unit
that flips back to a side it left gets the blend s rho_first + (1 - s) rho_second of its two
sides' affine maps (for ReLU x -> s x, equal to ReLU at a = 0; at a kink t in general, both
equal rho(t)), and s solves f(s) = 0, f = +-(t - a) at the equilibrium of the piece with weight
s, started at the chord's root between f(0) > 0 >= f(1). A pooling window whose winner w and
runner-up v swap back and forth likewise gets s x_w + (1 - s) x_v, with root x_w - x_v = 0, and
an entry observed to beat such a group joins it (a three- or four-way tie: weights t_k on the
others, 1 - sum t_k on the first, roots x_k - x_first = 0). One sample's kink units are coupled
through its equilibrium, so their roots are found together, by Broyden's method per sample
(``_KinkNewton``), to |f| <= tol max_l ||e_l||.

An activation's kink unit observed on neither side of its pair (a clip unit that crosses its
other kink) leaves the kink units and takes that side; one that does so three times sits where
its two kinks meet, which a pair cannot represent: the solve gives up there.

**The check.** The frozen layers are the solve's own; the state is accepted only by the real
network: it is linearised once more with every unit's value the real layer's and its slope the
solved one (Clarke's), and the phase's residual is measured there (``solve_on_pieces``). A real
value far from the frozen one (a unit solved against the wrong pair) shows as a residual above
``tol``, and the phase falls back to descent. Its parameter gradients are taken from that
linearisation: the solved slopes, the limit of a smoothed kink. A module called more than once
in one pass has one piece per module, not per call, and refuses the solve. When the rounds run
out, or a sample's kink units come back unsolved to where they were (``CYCLE``: Broyden's steps
on coupled slopes held in [0, 1] can cycle), the solve gives up and the caller goes on with
descent. ``ActiveSetResult.changed`` counts
the side changes of all rounds (units, pooling windows), ``on_kink`` the units solved on their
kink.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import Clip, Derivatives, derivatives_of
from .kinks import pin_of, pool_geometry, tiles
from .solvers import relative_residual
from .structure import Structure, structure_of

MAX_ROUNDS = 30
#: The kink units' iteration cycles when a sample, unsolved, comes back to within ``REPEATED``
#: (in each of its s) of where it was 2 to ``CYCLE`` rounds before, having left it by more than
#: ``LEFT`` in between (a unit joining or leaving starts the record again) and its largest |f|
#: not smaller by a fraction ``REPEATED``: the solve stops there (``Pieces.cycling``) instead of
#: running out of rounds. A stall (rounds that hardly move) is not a cycle: Broyden's steps
#: stall for a few rounds and go on.
CYCLE = 3
REPEATED = 1e-3
LEFT = 1e-2
#: Each piece is relaxed to this fraction of the phase's tolerance: a kink unit's f is read off
#: the relaxed state and is solved to the phase's tolerance, so the relaxation's own error must
#: stay below it (at ``tol`` itself, f wanders by about its tolerance from round to round).
PIECE_TOLERANCE = 0.1


class _KinkNewton:
    """Broyden's method, per sample, on the kink units' f(s) = 0 (one sample's units are coupled
    through its equilibrium; samples are independent). A unit joins with the chord of its two
    sides, f(0) > 0 >= f(1), as its own slope df/ds, and its sample's Jacobian is then updated
    by Broyden's rank-one secant (Broyden 1965) from each round's change of s and f; after a
    step that made its |f| worse, the Jacobian starts again from the chords, updated by that
    step's secant (a chord off by a factor would otherwise overshoot the same way again); s
    stays in [0, 1], and a unit at an end whose f agrees with that side (s = 0, f <= 0 or
    s = 1, f >= 0) is a plain unit there, held until its f changes sign."""

    def __init__(self):
        self.members: dict[int, list[tuple[int, int]]] = {}  # per sample: (piece, unit index)
        self.chords: dict[int, list[float]] = {}
        self.jacobians: dict[int, Tensor] = {}
        self.last: dict[int, tuple[Tensor, Tensor]] = {}
        self.visited: list[tuple[Tensor, Tensor]] = []  # latest rounds' s and largest |f| per sample
        self.repeating = False

    def join(self, piece: int, sample: int, unit: int, chord: float) -> None:
        members = self.members.setdefault(sample, [])
        members.append((piece, unit))
        self.chords.setdefault(sample, []).append(chord)
        jacobian = torch.zeros(len(members), len(members), dtype=torch.float64)
        if sample in self.jacobians:
            jacobian[:-1, :-1] = self.jacobians[sample]
        jacobian[-1, -1] = chord
        self.jacobians[sample] = jacobian
        self.last.pop(sample, None)
        self.visited = []

    def leave(self, piece: int, sample: int, unit: int) -> None:
        """A unit that left its kink (``_Piece.update``)."""
        members = self.members[sample]
        keep = [index for index, member in enumerate(members) if member != (piece, unit)]
        self.members[sample] = [members[index] for index in keep]
        self.chords[sample] = [self.chords[sample][index] for index in keep]
        self.jacobians[sample] = self.jacobians[sample][keep][:, keep]
        self.last.pop(sample, None)
        self.visited = []

    def step(self, pieces: list["_Piece"], atol: float) -> tuple[float, int]:
        """Take the kink units' f at their s, propose their next s in the pieces; the largest
        |f| of a unit not at an end (0: all solved at an end), and how many are on their kink.
        The samples' systems are solved together, each padded to the largest (padding: units at
        an end); ``atol`` is the size of f below which a change of f is the relaxations' noise."""
        read = [piece.kink_units() for piece in pieces]  # one host read per piece
        samples = [sample for sample, members in self.members.items() if members]
        if not samples:
            self.repeating = False
            return 0.0, 0
        sizes = [len(self.members[sample]) for sample in samples]
        keys = [(piece, sample, unit) for sample in samples for piece, unit in self.members[sample]]
        values = torch.tensor([read[piece][sample, unit] for piece, sample, unit in keys], dtype=torch.float64)
        counts = torch.tensor(sizes)
        row = torch.repeat_interleave(torch.arange(len(samples)), counts)
        column = torch.arange(len(keys)) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)

        def padded(flat: Tensor, fill: float = 0.0) -> Tensor:  # (sample, member), filled past its members
            return torch.full((len(samples), max(sizes)), fill, dtype=torch.float64).index_put_((row, column), flat)

        s, f = padded(values[:, 0]), padded(values[:, 1])
        present = torch.arange(max(sizes)) < counts.unsqueeze(1)
        at_end = ((s <= 0) & (f <= 0)) | ((s >= 1) & (f >= 0)) | ~present
        free = ~at_end
        jacobian = torch.zeros(len(samples), max(sizes), max(sizes), dtype=torch.float64)
        last_s, last_f = torch.zeros_like(s), torch.zeros_like(f)
        known = torch.zeros(len(samples), dtype=torch.bool)
        for index, (sample, size) in enumerate(zip(samples, sizes)):
            jacobian[index, :size, :size] = self.jacobians[sample]
            if sample in self.last:  # a change of f within the tolerance is the relaxation's noise
                known[index] = True
                last_s[index, :size], last_f[index, :size] = self.last[sample]
        chords = padded(torch.tensor([chord for sample in samples for chord in self.chords[sample]],
                                     dtype=torch.float64), 1.0)
        ds, df = s - last_s, f - last_f
        norm, last_norm = (f * free).norm(dim=1), (last_f * free).norm(dim=1)
        # a step that made the residual worse drops the accumulated secants: the Jacobian starts
        # again from the chords, updated by the latest secant (the step that told)
        worse = known & (norm >= last_norm) & (last_norm > atol)
        jacobian = torch.where(worse[:, None, None], torch.diag_embed(chords), jacobian)
        squared = (ds * ds).sum(1)
        secant = known & (squared > 0) & (df.abs().amax(1) > atol)
        correction = (df - (jacobian @ ds.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1) * ds.unsqueeze(1)
        jacobian = torch.where(secant[:, None, None], jacobian + correction / squared.clamp_min(1e-300)[:, None, None],
                               jacobian)
        move, singular = self._newton_moves(jacobian, f, free, chords)
        for index, (sample, size, again) in enumerate(zip(samples, sizes, singular.tolist())):
            if again:  # starts again from the chords
                self.jacobians[sample] = torch.diag(chords[index, :size])
                self.last.pop(sample, None)
            else:
                self.jacobians[sample] = jacobian[index, :size, :size]
                self.last[sample] = (s[index, :size], f[index, :size])
        proposals = (s + move).clamp(0.0, 1.0)[row, column]
        owner = torch.tensor([key[0] for key in keys])
        where = torch.tensor([key[1:] for key in keys])
        for piece in owner.unique().tolist():
            mine = owner == piece
            pieces[piece].set_unit_proposals(where[mine], proposals[mine])
        unsolved = torch.where(free, f.abs(), 0.0).amax(1)  # per sample
        self.repeating = bool(self._returned(s, unsolved, atol).any())
        self.visited = [*self.visited[1 - CYCLE:], (s, unsolved)]
        return float(unsolved.max()), int(free.sum())

    def _returned(self, s: Tensor, unsolved: Tensor, atol: float) -> Tensor:
        """Per sample: back, unsolved, within ``REPEATED`` of the s of 2 to ``CYCLE`` rounds
        before, after a round in between that left it by more than ``LEFT``, and its largest
        |f| no smaller than then (``CYCLE``)."""
        returned = torch.zeros_like(unsolved, dtype=torch.bool)
        for back in range(2, len(self.visited) + 1):
            before, then = self.visited[-back]
            left = torch.stack([(between - before).abs().amax(1) for between, _ in self.visited[1 - back:]]).amax(0)
            returned |= (((s - before).abs().amax(1) <= REPEATED) & (left > LEFT) & (then > atol)
                         & (unsolved >= (1 - REPEATED) * then))
        return returned & (unsolved > atol)

    @staticmethod
    def _newton_moves(jacobian: Tensor, f: Tensor, free: Tensor, chords: Tensor) -> tuple[Tensor, Tensor]:
        """Each sample's Newton step -J^-1 f on its free units (the system restricted to them:
        the others keep their s), and the samples whose Jacobian is singular, which take the
        diagonal step of their chords instead."""
        both = free.unsqueeze(-1) & free.unsqueeze(1)
        system = torch.where(both, jacobian, 0.0) + torch.diag_embed((~free).to(jacobian.dtype))
        newton, info = torch.linalg.solve_ex(system, torch.where(free, -f, 0.0))
        singular = info != 0
        diagonal = torch.where(free, -f / chords, 0.0)
        return torch.where(singular.unsqueeze(-1), diagonal, newton), singular


class _Piece:
    """One piecewise-linear layer: its forward as it was (observing the piece and the input of
    each call: ``_read`` gives its sides), frozen at a piece (``_frozen``), or checked (real
    values, frozen slopes). A subclass keeps its units' pieces: ``freeze`` applies the proposed
    one, ``update`` compares an observed call with the frozen piece it relaxed on and proposes
    the next, ``kink_units`` gives the kink units' (s, f) to ``_KinkNewton``, whose next s it
    takes in ``proposal`` (``set_unit_proposals``)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.in_place = bool(getattr(module, "inplace", False))
        self.previous = module.__dict__.get("forward")  # a pin of ``core.kinks``, or None
        self.pin = pin_of(module)
        self.mode = "observed"  # or "frozen", or "checked": real values, frozen slopes
        self.calls = 0  # observed calls since ``Pieces.observe``
        self.started = False
        self.side: Tensor | None = None  # the piece at the latest observed call
        self.input: Tensor | None = None

    def _forward(self, x: Tensor) -> Tensor:
        return type(self.module).forward(self.module, x) if self.previous is None else self.previous(x)

    def __call__(self, x: Tensor) -> Tensor:
        if self.mode == "observed":
            self.calls += 1
            self.input = x.detach().clone() if self.in_place else x.detach()
            self.side = self._read(self.input)
            return self._forward(x)
        output = self._frozen(x)
        if self.mode == "checked":
            real = self._forward(x.detach().clone() if self.in_place else x.detach())
            output = real + (output - output.detach())
        # a unit set to compute in place writes into x, as its own forward does (a residual
        # block whose branch starts with it adds the rectified input)
        return x.copy_(output) if self.in_place else output

    def _unit(self, tensor: Tensor) -> Tensor:
        return tensor.reshape(tensor.shape[0], -1)

    def set_unit_proposals(self, where: Tensor, values: Tensor) -> None:
        """The next s of kink units at ``where`` (rows: sample, unit index)."""
        flat = self.proposal.view(self.proposal.shape[0], -1)  # in place: a view
        flat[where[:, 0], where[:, 1]] = values.to(flat)


@dataclass(frozen=True)
class Kinks:
    """A piecewise-linear unit rho: kinks t_1 < ... < t_k, the slopes of its k + 1 sides, its
    values rho(t_i), and whether a unit exactly at t_i takes the side above (autograd's slope
    there)."""

    at: tuple[float, ...]
    slopes: tuple[float, ...]
    values: tuple[float, ...]
    upper: tuple[bool, ...]

    def side(self, a: Tensor) -> Tensor:
        side = torch.zeros_like(a, dtype=torch.long)
        for t, upper in zip(self.at, self.upper):
            side += (a >= t) if upper else (a > t)
        return side


def kinks_of(module: nn.Module) -> Kinks | None:
    """The kinks of PyTorch's piecewise-linear units (the exact types: a subclass computes its
    own function), None for other modules."""
    kind = type(module)
    if kind is nn.ReLU:
        return Kinks((0.0,), (0.0, 1.0), (0.0,), (False,))
    if kind is nn.LeakyReLU:
        return Kinks((0.0,), (module.negative_slope, 1.0), (0.0,), (False,))
    if kind in (nn.Hardtanh, nn.ReLU6, Clip):
        low, high = float(module.min_val), float(module.max_val)
        return Kinks((low, high), (0.0, 1.0, 0.0), (low, high), (False, True))
    if kind is nn.Hardsigmoid:
        return Kinks((-3.0, 3.0), (0.0, 1 / 6, 0.0), (0.0, 1.0), (False, True))
    return None


class _ActivationPiece(_Piece):
    """A piecewise-linear activation (``Kinks``). Per unit: its ``first`` and ``second`` side
    (equal, the unit's side, off its kink) and ``weight`` s on the first; frozen, the unit is
    the blend s rho_first(a) + (1 - s) rho_second(a) of its sides' affine maps, one affine map
    a -> m a + c. ``kink`` marks the units on their kink: there the two sides meet at the kink
    t, and f(s) = +-(t - a) (``_gap``, in ``value``) is positive while the first side holds."""

    def __init__(self, module: nn.Module, kinks: Kinks):
        super().__init__(module)
        self.kinks = kinks
        # the frozen slopes m (checked: the same), for the layers' closed forms (``Pieces.derivatives``)
        self.derivatives = Derivatives(lambda pre, output: self.slope,
                                       lambda cotangent, pre, output: cotangent * self.slope)
        at = torch.tensor(kinks.at, dtype=torch.float64)
        slopes = torch.tensor(kinks.slopes, dtype=torch.float64)
        # rho_i(a) = rho(t) + m_i (a - t) with t the side's lower kink (the first side: its upper)
        anchors = torch.cat([at[:1], at])
        values = torch.tensor(kinks.values, dtype=torch.float64)
        self.tables = (slopes, torch.cat([values[:1], values]) - slopes * anchors, at)

    def freeze(self) -> None:
        """Freeze the proposed piece (the observed one in the first round)."""
        if not self.started:
            self.first = self.second = self.next_first = self.next_second = self.side
            self.weight = self.proposal = torch.ones(self.side.shape, dtype=self.input.dtype,
                                                     device=self.side.device)
            self.kink = torch.zeros_like(self.side, dtype=torch.bool)
            # each unit's last flip: from, to (-1: none), and its gap then (<= 0)
            self.flip_from, self.flip_to = torch.full_like(self.side, -1), torch.full_like(self.side, -1)
            self.flip_gap = torch.zeros_like(self.weight)
            self.escapes = torch.zeros_like(self.side, dtype=torch.uint8)
            self.started, self.unchanged = True, False
        elif self.unchanged:  # the last update proposed the same piece
            self.mode = "frozen"
            return
        else:
            self.first, self.second, self.weight = self.next_first, self.next_second, self.proposal
        self._frozen_maps()
        self.mode = "frozen"

    def update(self) -> tuple[int, list[tuple[int, int, float]], list[list[int]]]:
        """The units that changed side, those that became kink units (a unit that flips back to
        the side it left the time before: f(1) = its gap now, f(0) = minus its gap then, in the
        pair's orientation) and the kink units that left (observed on neither side of their
        pair: ``_KinkNewton.leave``)."""
        x, side = self.input, self.side
        escaped = self.kink & (side != self.first) & (side != self.second)
        changed = (~self.kink & (side != self.first)) | escaped
        self.unchanged = not changed.any() and not self.kink.any()
        if self.unchanged:  # the piece it relaxed on: nothing to do
            return 0, [], []
        self.kink = self.kink & ~escaped
        self.escapes = self.escapes + escaped
        self.value = self._gap(x, self.first, self.second)
        gap = self._gap(x, self.first, side)
        back = changed & (self.flip_from == side) & (self.flip_to == self.first) & self._adjacent(self.first, side)
        f_at_0 = -self.flip_gap
        record = changed & ~back
        self.flip_from = torch.where(record, self.first, self.flip_from)
        self.flip_to = torch.where(record, side, self.flip_to)
        self.flip_gap = torch.where(record, gap, self.flip_gap)
        self.next_second = torch.where(self.kink, self.second, side)
        self.next_first = torch.where(self.kink | back, self.first, side)
        self.proposal = torch.where(self.kink, self.weight, torch.ones_like(self.weight))
        return int(changed.sum()), self.opened(back, f_at_0, gap), self._unit(escaped).nonzero().tolist()

    def kink_units(self) -> dict[tuple[int, int], tuple[float, float]]:
        """(s, f) of each kink unit, keyed by (sample, unit index): one read back."""
        if not self.started or not self.kink.any():
            return {}
        where = self._unit(self.kink)
        values = torch.stack([self._unit(self.weight)[where], self._unit(self.value)[where]], 1).tolist()
        return {tuple(key): value for key, value in zip(where.nonzero().tolist(), values)}

    def stuck(self) -> bool:
        """Whether a unit left its kink three times (``Pieces.cycling``)."""
        return self.started and bool((self.escapes >= 3).any())

    def opened(self, back: Tensor, f_at_0: Tensor, f_at_1: Tensor) -> list[tuple[int, int, float]]:
        """Units ``back`` join the kink units, at the root of their chord from f(0) > 0 to
        f(1) <= 0; their (sample, unit, chord slope)."""
        self.kink = self.kink | back
        chord = f_at_1 - f_at_0
        self.proposal = torch.where(back, f_at_0 / (-chord).clamp_min(torch.finfo(chord.dtype).tiny), self.proposal)
        where = self._unit(back).nonzero().tolist()
        slopes = self._unit(chord)[back.view(back.shape[0], -1)].tolist()
        return [(b, u, slope) for (b, u), slope in zip(where, slopes)]

    def _read(self, x: Tensor) -> Tensor:
        side = self.kinks.side(x)
        on_kink = getattr(self.pin, "on_kink", None)  # pinned at the free state: inactive
        return side if on_kink is None else side.masked_fill(on_kink, 0)

    def _frozen_maps(self) -> None:
        slopes, offsets, _ = (table.to(self.weight) for table in self.tables)
        self.slope = torch.lerp(slopes[self.second], slopes[self.first], self.weight)
        self.offset = torch.lerp(offsets[self.second], offsets[self.first], self.weight)

    def _frozen(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.offset, x, self.slope)

    def _adjacent(self, first: Tensor, second: Tensor) -> Tensor:
        return (first - second).abs() == 1

    def _gap(self, x: Tensor, first: Tensor, second: Tensor) -> Tensor:
        at = self.tables[2].to(x)
        upward = second > first
        kink = at[torch.where(upward, first, first - 1).clamp(0, len(self.kinks.at) - 1)]
        return torch.where(upward, kink - x, x - kink)


class _MaxPoolPiece(_Piece):
    """A ``MaxPool2d`` layer whose windows tile the input; a side is a window's winner (its
    index k among the window's K entries). Frozen, each window is sum_k w_k x_k: one-hot on its
    winner, or, on a kink window, spread over the tied group of entries that swap: the first
    (the primary) takes 1 - sum of the others' weights t_k, each of which is a kink unit with
    f_k = x_k - x_first (it falls as t_k grows). A group starts as a pair that swaps back and
    forth and grows by any entry observed to beat it (a three-way tie is three entries)."""

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self.kernel = pool_geometry(module)[0]

    def _read(self, x: Tensor) -> Tensor:
        """The winners (the first maximum, as max-pooling takes it; pinned losers excluded), as
        indices into the window (and, in ``side_flat``, into the input's own layout)."""
        losers = getattr(self.pin, "losers", None)
        (kh, kw), width = self.kernel, x.shape[-1]
        self.side_flat = F.max_pool2d(x if losers is None else x.masked_fill(losers, -torch.inf), self.kernel,
                                      return_indices=True)[1]
        return (self.side_flat // width % kh) * kw + self.side_flat % width % kw

    def freeze(self) -> None:
        self.mode = "frozen"
        if not self.started:
            entries = self.kernel[0] * self.kernel[1]
            self.first, self.first_flat = self.side, self.side_flat
            self.weights = F.one_hot(self.side, entries).to(self.input.dtype)
            self.members = self.weights > 0
            self.chord = torch.zeros(self.side.shape, dtype=self.input.dtype, device=self.side.device)
            self.flip_from, self.flip_to = torch.full_like(self.side, -1), torch.full_like(self.side, -1)
            self.flip_gap = torch.zeros_like(self.chord)
            self.started, self.next_weights = True, False
        elif not self.next_weights:  # the last update proposed no change
            return
        else:
            self.first, self.first_flat, self.members = self.next_first, self.next_first_flat, self.next_members
        self.primary = F.one_hot(self.first, self.members.shape[-1]).bool()
        if self.next_weights:  # proposed by the last update
            others = self.proposal * (self.members & ~self.primary).to(self.proposal.dtype)
            others = others / others.sum(-1, keepdim=True).clamp_min(1.0)  # at most all the weight to the others
            self.weights = others + self.primary.to(others.dtype) * (1 - others.sum(-1, keepdim=True))
        self.kink = self.members.sum(-1) > 1
        # the few members of tied groups, gathered from the input's own layout by ``_frozen``
        (kh, kw), width = self.kernel, self.input.shape[-1]
        self.other_mask = self.members & ~self.primary & self.kink.unsqueeze(-1)
        others = self.other_mask.nonzero()
        *window, k = others.unbind(-1)
        self.others = (tuple(window), (window[-2] * kh + k // kw) * width + window[-1] * kw + k % kw,
                       self.first_flat[tuple(window)], self.weights[tuple(others.unbind(-1))])

    def _frozen(self, x: Tensor) -> Tensor:
        """sum_k w_k x_k per window: the first entry, plus t_k (x_k - x_first) for the others of
        a tied group."""
        flat = x.flatten(-2)
        output = flat.gather(-1, self.first_flat.flatten(-2)).view(self.first_flat.shape)
        window, member, primary, weight = self.others
        if not weight.numel():
            return output
        samples = window[:-2]
        delta = weight * (flat[(*samples, member)] - flat[(*samples, primary)])
        return output.index_put(window, delta, accumulate=True)

    def update(self) -> tuple[int, list[tuple[int, int, float]], list[list[int]]]:
        """The windows whose winner changed (or that grew their group), and the new kink units:
        the partner of a pair that swaps back and forth (its weight at the chord's root between
        f(0) = x_partner - x_first now and f(1) then), an entry that beats a group (weight 0, the
        group's chord as its slope)."""
        side, entries, flat = self.side, self.members.shape[-1], self.input.flatten(-2)
        here = lambda index: flat.gather(-1, index.flatten(-2)).view(index.shape)  # noqa: E731
        changed = ~self.kink & (side != self.first)
        grow = self.kink & ~self.members.gather(-1, side.unsqueeze(-1)).squeeze(-1)
        self.next_first, self.next_first_flat, self.next_members = self.first, self.first_flat, self.members
        self.next_weights = bool(self.kink.any())
        self.proposal = self.weights.clone() if self.next_weights else self.weights  # Newton writes in it
        if not changed.any() and not grow.any():
            return 0, [], []
        self.next_weights = True
        gap = here(self.first_flat) - here(self.side_flat)  # <= 0 where the winner changed
        back = changed & (self.flip_from == side) & (self.flip_to == self.first)
        record = changed & ~back
        chord = (self.flip_gap + gap).clamp_max(-torch.finfo(gap.dtype).tiny)  # f(1) - f(0) of the pair
        root = gap / chord  # f(0) / (f(0) - f(1)), f(0) = -gap
        self.chord = torch.where(back, chord, self.chord)
        self.flip_from = torch.where(record, self.first, self.flip_from)
        self.flip_to = torch.where(record, side, self.flip_to)
        self.flip_gap = torch.where(record, gap, self.flip_gap)
        winner = F.one_hot(side, entries).bool()
        joining, moved = winner & (back | grow).unsqueeze(-1), winner & record.unsqueeze(-1)
        self.next_first = torch.where(record, side, self.first)
        self.next_first_flat = torch.where(record, self.side_flat, self.first_flat)
        self.next_members = torch.where(record.unsqueeze(-1), moved, self.members | joining)
        self.proposal = torch.where(record.unsqueeze(-1), moved.to(self.weights.dtype), self.proposal)
        self.proposal = torch.where(joining, (root * back).unsqueeze(-1).expand_as(self.proposal), self.proposal)
        units = self._unit(joining).nonzero().tolist()
        chords = self._unit(self.chord.unsqueeze(-1).expand_as(joining))[self._unit(joining)].tolist()
        return int(changed.sum() + grow.sum()), [(b, u, c) for (b, u), c in zip(units, chords)], []

    def stuck(self) -> bool:
        return False  # a group grows instead of leaving

    def kink_units(self) -> dict[tuple[int, int], tuple[float, float]]:
        """(t, f) of each non-primary member of a kink window at the observed state, keyed by
        (sample, window * K + k): f_k = x_k - x_first."""
        window, member, primary, weight = self.others
        if not weight.numel():
            return {}
        flat, samples = self.input.flatten(-2), window[:-2]
        values = torch.stack([weight, flat[(*samples, member)] - flat[(*samples, primary)]], 1).tolist()
        keys = self._unit(self.other_mask).nonzero().tolist()  # the same row-major order
        return {tuple(key): value for key, value in zip(keys, values)}


class Pieces:
    """The piecewise-linear units and ``MaxPool2d`` layers of a network, observed or frozen (a
    context manager)."""

    def __init__(self, modules: list[nn.Module]):
        self.pieces = [_piece_for(m) for m in modules]
        self.newton = _KinkNewton()
        self.on_kink = 0
        self._activations = {id(piece.module): piece for piece in self.pieces if isinstance(piece, _ActivationPiece)}

    def derivatives(self, module: nn.Module) -> Derivatives | None:
        """The closed-form derivatives of ``module`` inside the solve: a piecewise-linear unit's
        are its frozen slopes (also when checked: real values, frozen slopes), any other
        activation's its own (``activations.derivatives_of``; max-pooling has none)."""
        piece = self._activations.get(id(module))
        return derivatives_of(module) if piece is None else piece.derivatives

    @classmethod
    def of(cls, network: nn.Module) -> "Pieces | None":
        """The pieces of a network made of units this module handles (``_solvable``), None
        where it has none."""
        modules = _solvable(_candidates(network))
        return None if modules is None else cls(modules)

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
        for piece in self.pieces:
            piece.freeze()

    def observe(self) -> None:
        for piece in self.pieces:
            piece.mode, piece.calls = "observed", 0

    def check(self) -> None:
        """Real values with the last frozen slopes (the module docstring's check)."""
        for piece in self.pieces:
            piece.mode = "checked"

    def called_once(self) -> bool:
        """Whether every piece was called exactly once since ``observe`` (one module at one
        place: its piece is that call's)."""
        return all(piece.calls == 1 for piece in self.pieces)

    def update(self, atol: float) -> tuple[int, float]:
        """The units that changed side since the frozen pieces, and the kink units' largest
        |f| (``_KinkNewton.step``); the next pieces are proposed."""
        results = [piece.update() for piece in self.pieces]
        for index, (_, _, left) in enumerate(results):
            for sample, unit in left:
                self.newton.leave(index, sample, unit)
        largest, self.on_kink = self.newton.step(self.pieces, atol)
        for index, (_, opened, _) in enumerate(results):
            for sample, unit, chord in opened:
                self.newton.join(index, sample, unit, chord)
        return sum(changed for changed, _, _ in results), largest

    def cycling(self) -> bool:
        """Whether a unit left its kink three times (its equilibrium is where three or more of its
        sides meet, a clip unit between both of its kinks, which a pair cannot represent), or the
        kink units' iteration came back to where it was (``CYCLE``)."""
        return self.newton.repeating or any(piece.stuck() for piece in self.pieces)


def _candidates(network: nn.Module) -> tuple[tuple[nn.Module, bool], ...]:
    """The modules pieces could be made of (by type: piecewise-linear units, ``MaxPool2d``),
    each with whether it is used at several places of the network."""
    uses = Counter(id(m) for _, m in network.named_modules(remove_duplicate=False))
    return tuple((m, uses[id(m)] > 1) for m in network.modules() if type(m) is nn.MaxPool2d or kinks_of(m) is not None)


def _solvable(candidates: tuple[tuple[nn.Module, bool], ...]) -> list[nn.Module] | None:
    """The candidates supported now (``_supported``), None where there are none, one is used at
    several places (one piece per call is not one per module) or a pool's windows do not tile
    its input."""
    modules = [(m, shared) for m, shared in candidates if _supported(m)]
    if not modules or any(shared or (type(m) is nn.MaxPool2d and not tiles(m)) for m, shared in modules):
        return None
    return [m for m, _ in modules]


#: each network structure's candidates (``core.structure``: the tree, not the modules' settings)
_CANDIDATES: "weakref.WeakKeyDictionary[Structure, tuple[tuple[nn.Module, bool], ...]]" = weakref.WeakKeyDictionary()


def has_pieces(network: nn.Module) -> bool:
    """Whether ``Pieces.of(network)`` gives pieces: the candidates read once per network
    structure, their settings (a pool's stride, a replaced forward) at every call."""
    structure = structure_of(network)
    candidates = _CANDIDATES.get(structure)
    if candidates is None:
        candidates = _CANDIDATES[structure] = _candidates(network)
    return _solvable(candidates) is not None


def _supported(module: nn.Module) -> bool:
    """PyTorch's own piecewise-linear units and ``MaxPool2d``, unless their forward was replaced
    on the instance (a pin of ``core.kinks`` is not a replacement: it computes the same)."""
    replaced = "forward" in module.__dict__ and pin_of(module) is None
    pool = type(module) is nn.MaxPool2d and not module.return_indices
    return not replaced and (pool or kinks_of(module) is not None)


def _piece_for(module: nn.Module) -> _Piece:
    return _MaxPoolPiece(module) if type(module) is nn.MaxPool2d else _ActivationPiece(module, kinks_of(module))


@dataclass
class ActiveSetResult:
    """How the active-set solve ended: ``consistent`` (the last piece was the state's own, its
    kink units solved, and the state passed the check: its ``residual`` with the real layers'
    values and the solved slopes <= tol; None where the rounds gave up first), the steps of its
    relaxations, ``changed``, the side changes of all rounds, and ``on_kink``, the units solved
    on a kink."""

    consistent: bool
    steps: int
    changed: int
    on_kink: int
    residual: float | None = None


def relinearize(energy, state) -> None:
    """Evaluate every layer again at the state's errors (the errors are the variables: x_l =
    mu_l + e_l from the bottom up, with ``energy``'s layers as they compute now)."""
    errors = [e.clone() for e in energy.errors(state)]
    state.linearizations[0] = energy.linearizers[0](state.activities[0])
    for index, error in enumerate(errors, start=1):
        energy.set_error(state, index, error)


@torch.no_grad()
def evaluate_layers(energy, state) -> None:
    """Call every layer as it computes now at the state (x_l = mu_l + e_l from the bottom up),
    without touching the state: observed pieces record their sides."""
    x = energy.first_input(state)
    for layer, error in zip(energy.layers, energy.errors(state)):
        x = layer(x) + error
    energy.layers[-1](x)


def solve_on_pieces(energy, state, pieces: Pieces, tol: float,
                    relax_piece: Callable[[object], object]) -> ActiveSetResult:
    """The iteration of the module docstring on ``state`` (in place); ``energy`` linearises its
    layers with the pieces' slopes (``Pieces.derivatives``, not read off outputs), ``relax_piece(state)``
    relaxes one phase of it and returns its ``InferenceReport`` (to a tolerance below ``tol``,
    ``PIECE_TOLERANCE``: the kink units' f are read off its state). Kink units are solved to
    |f| <= tol max_l ||e_l|| (the batch's errors of layer l): a kink unit's f moves one unit of
    its layer's prediction by at most |f|, against the relaxation's residual, ``tol`` relative
    to ||e_l||. The state that ends the rounds is linearised for the check (real values, solved
    slopes) and its residual measured there; if it is not consistent the caller restores it."""
    steps = changed = 0
    with pieces:
        pieces.observe()
        evaluate_layers(energy, state)
        if not pieces.called_once():
            return ActiveSetResult(False, 0, 0, 0)
        for _ in range(MAX_ROUNDS):
            pieces.freeze()
            relinearize(energy, state)
            report = relax_piece(state)
            steps += report.steps
            atol = tol * float(torch.stack(torch._foreach_norm(energy.errors(state))).max())
            pieces.observe()
            evaluate_layers(energy, state)
            moved, largest = pieces.update(atol)
            changed += moved
            if pieces.cycling():
                break
            solved = largest <= atol
            if moved == 0 and solved and report.residual <= tol:
                pieces.check()
                relinearize(energy, state)
                errors = energy.errors(state)
                residual = relative_residual(energy.error_gradients(state, errors), energy.local_terms(state, errors))
                return ActiveSetResult(residual <= tol, steps, changed, pieces.on_kink, residual)
    return ActiveSetResult(False, steps, changed, pieces.on_kink)
