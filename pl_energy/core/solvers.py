"""Inference solvers: the ways of finding an energy's equilibrium.

Inference minimises an energy E over its free variables v until dE/dv = 0 (Millidge et al. 2022,
Eq. 1). A solver is a choice of coordinates (what moves) and an update rule (how it moves).

Coordinates:

- ``ActivityCoordinates``: the activities x_l, the dynamics the papers write down
  (x_l <- x_l - eta P_l dE/dx_l, P_l the energy's per-layer preconditioner). Any energy.
- ``FirstLayerInRowSpace`` (``core.reduced_input``): the activities of a PC energy with the
  first hidden layer's error moved in the row space of the next layer's weights, a speed path
  of fixed-step descent (the same dynamics, fewer products per step).
- ``ErrorCoordinates``: the prediction errors e_l = x_l - mu_l of a predictive-coding energy, with
  x_l = layer_l(x_{l-1}) + e_l propagated forward from the clamped input (error-based PC, Goemaere
  et al. 2025). The energy is the same function, E(e) = sum pi_l/2 ||e_l||^2 + lam L(x_L(e)), so
  the equilibrium is the same:

      dE/de_l = pi_l e_l + lam (d x_L / d x_l)^T dL/dx_L = 0
      <=>  pi_l e_l = -J_{l+1}^T ... J_L^T lam dL/dmu_L  <=>  dE/dx_l = 0 for every l.

  Each step sends the loss gradient through the whole network (one backward sweep, one forward
  sweep: the cost of a descent step on the activities), so the bottom layers get their signal at
  the first step instead of after L steps. This is a way of simulating the equilibrium on digital
  hardware, not a model of neurons: its inner step is a backward pass.

Update rules (all act on gradients scaled by P_l):

- ``gd``: fixed-step gradient descent on the activities (the papers' dynamics).
- ``error``: gradient descent on the errors, step 1 by default. At step 1 with pi_l = 1 the update
  is the fixed-point iteration e_l <- -G_l(e) (G_l the back-propagated loss gradient), which
  converges at the rate of lam times the loss curvature; when the residual stops falling (the
  iteration overshoots, or cycles across the kink of a ReLU) the step is halved, which turns the
  iteration into a damped (Krasnoselskii-Mann) one that settles.
- ``anderson``: ``error``'s step-1 fixed-point map with Anderson mixing of the last three
  iterates, per sample (Walker & Ni 2011). Where lam times the loss curvature is not small (pc's
  lam = 1 on a trained deep net) the plain map oscillates and ``error``'s halvings stall short of
  equilibrium; on a 10-layer tanh MLP over the first 200 batches of BP's training, ``error``
  converged on 7% of them, ``anderson`` on 82% (along pc's own training, neither: 2.6%).
- ``nesterov``: Nesterov's accelerated gradient on the activities, momentum k/(k+3), restarted
  whenever the gradient turns against the motion (O'Donoghue & Candes 2015). Any energy.
- ``sweep``: layered Hopfield energies: the odd layers move, then the even ones given the moved
  odd ones (block coordinate descent; at step 1 each block is minimised exactly for ReLU, clip,
  hardsigmoid and linear units: the asynchronous "dt = 1" relaxation of Scellier & Bengio 2017;
  for tanh, sigmoid, softplus and leaky_relu a sweep is a descent step, not a minimisation).

The relative residual measures how far a state is from equilibrium without a scale: each layer's
gradient is a balance of a local term a_l (pi_l eps_l for PC; c_l x_l for Hopfield) and the rest
b_l = g_l - a_l (top-down feedback), and

    residual = max_l ||g_l|| / (||a_l|| + ||g_l - a_l||)   (0/0 taken as 0),

which is 1 when one side is missing and 0 at equilibrium.

A phase that starts at another equilibrium and is moved off it by a nudge (EP's nudged phases
from the free equilibrium) measures its residual against what the nudge changed instead
(``start``: the local terms and gradients where it started, a_l^0 and g_l^0):

    residual = max_l ||g_l|| / (||a_l - a_l^0|| + ||(g_l - a_l) - (g_l^0 - a_l^0)||),

so that a tolerance is a fraction of the O(beta) displacement, not of the O(1) activities: with
the latter, stopping early left an error of tol / beta in the estimate whatever beta was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor


class Coordinates(Protocol):
    """What a solver moves."""

    def gradients(self, state) -> list[Tensor]:
        """dE/dv_l for every free variable v_l (per-sample energy)."""

    def moving_gradients(self, state) -> list[Tensor | None]:
        """The gradients ``move`` reads (None where it computes its own), for a step that
        measures nothing."""

    def local_terms(self, state) -> list[Tensor]:
        """The local part a_l of each gradient (for the residual)."""

    def move(self, state, directions: list[Tensor], step_size: float | Tensor) -> None:
        """v_l <- v_l - step_size * P_l * direction_l (a tensor step size: ``core.moves``)."""

    def components(self, state) -> tuple[Tensor, Tensor, Tensor]:
        """The energy's (I, L, E) at the state."""

    def total(self, state) -> Tensor:
        """E at the state, what inference watches when it keeps no trace."""

    def leave(self, state) -> None:
        """Put the state in plain form (coordinates that keep some variables outside it write
        them back); called once inference ends, also when it raised."""


@dataclass
class ActivityCoordinates:
    """The activities x_l of any energy."""

    energy: object

    def gradients(self, state) -> list[Tensor]:
        return self.energy.activity_gradients(state)

    def moving_gradients(self, state) -> list[Tensor | None]:
        return self.gradients(state)

    def local_terms(self, state) -> list[Tensor]:
        return self.energy.local_terms(state)

    def move(self, state, directions: list[Tensor], step_size: float | Tensor) -> None:
        self.energy.move_activities(state, directions, step_size)

    def components(self, state) -> tuple[Tensor, Tensor, Tensor]:
        return self.energy.components(state)

    def total(self, state) -> Tensor:
        return self.components(state)[2]

    def leave(self, state) -> None:
        """The activities are the state: nothing to write back."""


@dataclass
class ErrorCoordinates(ActivityCoordinates):
    """The prediction errors e_l of a predictive-coding energy (Goemaere et al. 2025), carried
    in the state in difference form (``PCState.carried``): a step reads them three times
    (gradient, residual, move) without forming x_l - mu_l, and a weak nudge's small errors stay
    exact beside O(1) activities."""

    def errors(self, state) -> list[Tensor]:
        return self.energy.errors(state)

    def gradients(self, state) -> list[Tensor]:
        return self.energy.error_gradients(state, self.errors(state))

    def local_terms(self, state) -> list[Tensor]:
        return self.energy.local_terms(state, self.errors(state))

    def move(self, state, directions: list[Tensor], step_size: float | Tensor) -> None:
        self.energy.move_errors(state, directions, step_size, self.errors(state))


@dataclass
class Balance:
    """Per-layer norms of a gradient g_l, its local term a_l and the rest g_l - a_l, as the rows
    of one (3, L) tensor on the device; the residual they give, read back (``residual``) or
    kept on the device (``ratio``, for rules that read it before every move)."""

    norms: Tensor

    @classmethod
    def of(cls, gradients: list[Tensor], local: list[Tensor],
           start: tuple[list[Tensor], list[Tensor]] | None = None) -> "Balance":
        """The norms at a state; with ``start`` (gradients, local terms where the phase started)
        the local term and the rest are those of the change since then."""
        rest = torch._foreach_sub(gradients, local)
        if start is not None:
            local, rest = torch._foreach_sub(local, start[1]), torch._foreach_sub(
                rest, torch._foreach_sub(start[0], start[1]))
        return cls(torch.stack(norms([*gradients, *local, *rest])).view(3, len(gradients)))

    @property
    def gradient(self) -> Tensor:
        return self.norms[0]

    @property
    def local(self) -> Tensor:
        return self.norms[1]

    @property
    def residual(self) -> float:
        """The residual, from the norms read back to the host in one read."""
        return largest_ratio_of(*self.norms.tolist())

    @property
    def ratio(self) -> Tensor:
        """The residual as a 0-dim tensor on the device (no host read)."""
        return largest_ratio(*self.norms)


def norms(tensors: list[Tensor]) -> list[Tensor]:
    """The Frobenius norm of each tensor: one ``_foreach_norm`` eagerly; while compiling one
    norm per tensor, which inductor fuses (its C++ wrapper has no kernel for ``_foreach_norm``
    and calls back into Python for it)."""
    if torch.compiler.is_compiling():
        return [torch.linalg.vector_norm(tensor) for tensor in tensors]
    return torch._foreach_norm(tensors)


def largest_ratio_of(gradient: list[float], local: list[float], rest: list[float]) -> float:
    """max_l ||g_l|| / (||a_l|| + ||g_l - a_l||) from the per-layer norms, 0/0 taken as 0 (and
    g/0 as infinite: a phase measured from its start that has not moved yet), NaN where a norm
    is NaN."""
    ratios = [g / (a + r) if a + r > 0 else (math.inf if g > 0 else g * 0)
              for g, a, r in zip(gradient, local, rest)]
    return math.nan if any(math.isnan(ratio) for ratio in ratios) else max(ratios)


def largest_ratio(gradient: Tensor, local: Tensor, rest: Tensor) -> Tensor:
    """``largest_ratio_of`` on the device, for rules that compare residuals without reading
    them back (``DampedIteration``; ``tests/test_solvers.py`` checks that the two agree)."""
    scale = local + rest
    unmoved = torch.where(gradient > 0, torch.full_like(scale, torch.inf), gradient * 0)
    return torch.where(scale > 0, gradient / scale.clamp_min(torch.finfo(scale.dtype).tiny), unmoved).max()


@dataclass
class SweepCoordinates(ActivityCoordinates):
    """The activities of a layered Hopfield energy, moved odd layers first, then even ones (whose
    gradients the sweep takes after the odd move: a step that measures nothing reads only the
    odd layers'). Gradients and local terms are divided by each layer's weight c_l, the units
    the sweep moves in: the same relative residual (each layer's ratio is free of its scale)."""

    def gradients(self, state) -> list[Tensor]:
        return self.energy.scaled_gradients(state)

    def moving_gradients(self, state) -> list[Tensor | None]:
        return self.energy.sweep_gradients(state)

    def local_terms(self, state) -> list[Tensor]:
        return self.energy.scaled_local_terms(state)

    def total(self, state) -> Tensor:
        return self.energy.total(state)

    def move(self, state, directions: list[Tensor], step_size: float) -> None:
        self.energy.sweep(state, directions, step_size)


def relative_residual(gradients: list[Tensor], local: list[Tensor],
                      start: tuple[list[Tensor], list[Tensor]] | None = None) -> float:
    """The relative residual of the module docstring (0 for no free layers)."""
    return Balance.of(gradients, local, start).residual if gradients else 0.0


def measure(coordinates: Coordinates, state, origin: tuple[list[Tensor], list[Tensor]] | None = None
            ) -> tuple[list[Tensor], Balance | None]:
    """The gradients at the state and their ``Balance`` (the residual's pieces; None without
    free variables), ``origin`` as in ``Balance.of``."""
    gradients = coordinates.gradients(state)
    return gradients, Balance.of(gradients, coordinates.local_terms(state), origin) if gradients else None


def advance(coordinates: Coordinates, iteration: "Iteration", state, gradients: list[Tensor],
            balance: Balance | None, step_size: float | Tensor) -> float | Tensor:
    """The move from the gradients at the state: the rule picks the step size (``observe``)
    and the direction; returns the step size it took."""
    step_size = iteration.observe(balance, step_size)
    coordinates.move(state, iteration.direction(gradients), step_size)
    return step_size


def step(coordinates: Coordinates, iteration: "Iteration", state, step_size: float | Tensor
         ) -> float | Tensor:
    """One step nobody checks: gradients (with their balance for a rule that reads it) and the
    move; no host read (a compiled step is one graph)."""
    if iteration.needs_residual:
        gradients, balance = measure(coordinates, state)
    else:
        gradients, balance = coordinates.moving_gradients(state), None
    return advance(coordinates, iteration, state, gradients, balance, step_size)


def run(coordinates: Coordinates, iteration: "Iteration", state, step_size: float | Tensor, steps: int,
        every: int) -> tuple[float | Tensor, list[tuple[Tensor, Tensor, Tensor]]]:
    """``steps`` steps nobody checks, with the energy's components after every ``every``-th
    step and the last, left on the device; returns the last step size and those components
    (compiled, the whole run is one graph: one call instead of one per step)."""
    watched = []
    for taken in range(1, steps + 1):
        step_size = step(coordinates, iteration, state, step_size)
        if taken % every == 0 or taken == steps:
            watched.append(coordinates.components(state))
    return step_size, watched


@dataclass
class Solver:
    """An update rule in some coordinates. Subclasses set the class attributes.

    Attributes:
        name: the value of ``solver=`` that selects it.
        default_step: the step used when an algorithm does not set one.
        check_every: how many steps apart the energy is watched, and the residual at most
            (sooner where its rate says the tolerance is near: ``inference._Phase.next_check``;
            every step where a trace asks for it, or the rule needs the residual at every step).
        rise_tolerance: a watched energy above its running minimum by more than this fraction
            of the descent so far (plus rounding) counts as divergence. Monotone rules use a
            small value; accelerated rules, whose energy may wobble, 1 (never above the start).
        adaptive: the rule halves its own step on a rise instead of failing.
        compiles: its steps read nothing back to the host, so that ``torch.compile`` traces
            each as one graph (``core.compiled_steps``; other rules run eagerly).
    """

    name: ClassVar[str]
    default_step: ClassVar[float] = 0.1
    check_every: ClassVar[int] = 1
    rise_tolerance: ClassVar[float] = 1e-2
    adaptive: ClassVar[bool] = False
    compiles: ClassVar[bool] = False

    def coordinates(self, energy) -> Coordinates:
        return ActivityCoordinates(energy)

    def faster_coordinates(self, energy, state, steps: int) -> Coordinates | None:
        """Faster coordinates of the same dynamics for ``steps`` fixed steps from ``state`` that
        nobody watches step by step (no tolerance, no ``on_step``, no back-off), or None."""
        return None

    def fixed_step_coordinates(self, energy, state, steps: int) -> Coordinates:
        """The coordinates ``steps`` fixed steps nobody watches run in: the faster ones where
        there are (``faster_coordinates``), else the plain ones."""
        faster = self.faster_coordinates(energy, state, steps)
        return self.coordinates(energy) if faster is None else faster

    def start(self) -> "Iteration":
        return Iteration()

    def min_steps(self, free_layers: int) -> int:
        """Steps before a small residual can be trusted: on the activities, a local update
        needs one step per layer before every layer has heard from the output."""
        return free_layers


@dataclass
class Iteration:
    """The memory of one relaxation (plain descent has none).

    ``needs_residual``: the rule reads the residual before every move (``observe``)."""

    needs_residual: ClassVar[bool] = False

    def direction(self, gradients: list[Tensor]) -> list[Tensor]:
        return gradients

    def observe(self, balance: Balance | None, step_size: float | Tensor) -> float | Tensor:
        """Called before each move with the balance at the state (None unless
        ``needs_residual``); returns the step size of the move. Rules that change it do so with
        tensor operations (no host read), so that a step is one compiled graph."""
        return step_size

    def reset(self) -> None:
        """Forget the history (after a back-off)."""

    def settled(self, step_size: float, balance: Balance, tol: float) -> bool:
        """Whether the state has stopped moving although the residual has not vanished (only
        rules that shrink their own step can tell; plain descent never says so)."""
        return False


@dataclass
class GradientDescent(Solver):
    """x_l <- x_l - eta P_l dE/dx_l: the papers' inference dynamics."""

    name: ClassVar[str] = "gd"
    check_every: ClassVar[int] = 10
    compiles: ClassVar[bool] = True

    def faster_coordinates(self, energy, state, steps: int) -> Coordinates | None:
        """The PC energy's first layer in the row space of W_2 when it saves work
        (``core.reduced_input``): the same steps, fewer products."""
        from .reduced_input import FirstLayerInRowSpace  # it builds on this module's coordinates

        return FirstLayerInRowSpace.around(energy, state, steps)


@dataclass
class ErrorDescent(Solver):
    """e_l <- e_l - eta dE/de_l / pi_l on a predictive-coding energy, halving eta when the
    residual stops falling."""

    name: ClassVar[str] = "error"
    default_step: ClassVar[float] = 1.0
    check_every: ClassVar[int] = 5
    adaptive: ClassVar[bool] = True
    compiles: ClassVar[bool] = True

    def coordinates(self, energy) -> Coordinates:
        if not hasattr(energy, "error_gradients"):
            raise TypeError(f"solver 'error' moves prediction errors and needs a predictive-coding "
                            f"energy, not {type(energy).__name__}; use solver='gd' or 'nesterov'")
        return ErrorCoordinates(energy)

    def start(self) -> "Iteration":
        return DampedIteration()

    def min_steps(self, free_layers: int) -> int:
        return 0  # every step reaches every layer


@dataclass
class DampedIteration(Iteration):
    """Halves the step whenever the residual fails to fall.

    At an equilibrium on the kink of a piecewise-linear activation (ReLU, hardsigmoid: PC
    equilibria sit there for the units whose pre-activation the nudge pushes across zero) the
    gradient jumps, the residual cannot vanish, and undamped steps cycle across the kink. The
    halvings then shrink the cycle onto the kink, and the state is taken as settled once the
    largest relative move of an error, step * ||P_l g_l|| / ||e_l||, is at most ``tol``.
    """

    needs_residual: ClassVar[bool] = True
    previous: Tensor | None = None  # the last residual (None: none yet, or forgotten)
    first: float | Tensor | None = None  # the first step size observed: below it, a step was halved
    damped: bool = False  # set by a back-off (``reset``)

    def observe(self, balance: Balance | None, step_size: float | Tensor) -> float | Tensor:
        """step_size / 2 where the residual did not fall since the last move, on the device
        (``relax`` passes a tensor step size to this rule)."""
        self.first = step_size if self.first is None else self.first
        ratio = balance.ratio
        rose = ratio >= (math.inf if self.previous is None else self.previous)
        self.previous = ratio
        return torch.where(rose, step_size * 0.5, step_size)

    def reset(self) -> None:
        self.previous = None
        self.damped = True

    def settled(self, step_size: float | Tensor, balance: Balance, tol: float) -> bool:
        # local_l = pi_l e_l and the move is step * g_l / pi_l: the ratio needs no precisions
        still = (balance.gradient * step_size <= tol * balance.local).all()
        if self.damped:
            return bool(still)
        return self.first is not None and bool(still & (step_size < self.first))  # one host read


@dataclass
class AndersonErrorDescent(ErrorDescent):
    """Error descent accelerated by Anderson mixing (Anderson 1965; Walker & Ni 2011): the
    fixed-point map T(e) = e - eta P dE/de of ``error`` at step 1, with the next iterate
    extrapolated from the last ``AndersonIteration.memory`` ones, per sample (each sample's
    energy is its own problem)."""

    name: ClassVar[str] = "anderson"
    check_every: ClassVar[int] = 2
    rise_tolerance: ClassVar[float] = 1.0  # extrapolation is not monotone: never above the start
    compiles: ClassVar[bool] = False  # not tried: a growing history of a per-sample least-squares fit

    def start(self) -> "Iteration":
        return AndersonIteration()


@dataclass
class AndersonIteration(Iteration):
    """Type-II Anderson acceleration of x <- x - eta P g(x) in the rule's own units.

    With the last moves e_{i+1} - e_i = -eta P d_i and gradient differences dG_i, the weights
    gamma = argmin ||g_k - sum_i gamma_i dG_i|| (per sample, a small ridge for conditioning)
    give the direction d_k = g_k - sum_i gamma_i (d_i + dG_i), i.e. the mixed iterate
    e_k + f_k - sum_i gamma_i (de_i + df_i) with f = -eta P g. The step size must stay fixed
    between resets (the solver's back-off resets it)."""

    memory: int = 3
    previous: tuple[Tensor, Tensor] | None = None  # (g_{k-1}, d_{k-1}) flattened per sample
    columns: list[tuple[Tensor, Tensor]] | None = None  # (dG_i, d_i) for the last `memory` steps

    def direction(self, gradients: list[Tensor]) -> list[Tensor]:
        flat = torch.cat([g.flatten(1) for g in gradients], dim=1)
        columns = self.columns = self.columns if self.columns is not None else []
        if self.previous is not None:
            columns.append((flat - self.previous[0], self.previous[1]))
            del columns[:-self.memory]
        if not columns:
            mixed = flat
        else:
            changes = torch.stack([c[0] for c in columns], dim=2)  # (B, N, m)
            moves = torch.stack([c[1] for c in columns], dim=2)
            wide = changes.double()  # the Gram matrix squares the conditioning: float64
            normal = torch.bmm(wide.transpose(1, 2), wide)
            ridge = 1e-8 * normal.diagonal(dim1=1, dim2=2).amax(1) + torch.finfo(torch.float64).tiny
            normal = normal + ridge[:, None, None] * torch.eye(len(columns), dtype=normal.dtype, device=normal.device)
            weights = torch.linalg.solve_ex(normal, torch.bmm(wide.transpose(1, 2), flat.unsqueeze(2).double()))[0]
            weights = torch.nan_to_num(weights, nan=0.0, posinf=0.0, neginf=0.0)  # a sample at rest
            mixed = flat - torch.bmm(moves + changes, weights.to(flat.dtype)).squeeze(2)
        self.previous = (flat, mixed)
        sizes = [g[0].numel() for g in gradients]
        return [part.reshape(g.shape) for part, g in zip(mixed.split(sizes, dim=1), gradients)]

    def reset(self) -> None:
        self.previous, self.columns = None, None


@dataclass
class Nesterov(Solver):
    """Nesterov's accelerated descent on the activities with gradient restarts."""

    name: ClassVar[str] = "nesterov"
    check_every: ClassVar[int] = 5
    rise_tolerance: ClassVar[float] = 1.0

    def start(self) -> "Iteration":
        return NesterovIteration()


@dataclass
class NesterovIteration(Iteration):
    """Velocity u_k = m_k u_{k-1} + g_k with m_k = k/(k+3), g_k taken at the look-ahead point,
    which then moves by -eta P ((1 + m_{k+1}) u_k - m_k u_{k-1}) (Sutskever et al. 2013's form of
    Nesterov's method); restart (k = 0, u = 0) when g_k . u_{k-1} < 0, i.e. the last move went
    uphill."""

    velocity: list[Tensor] | None = None
    count: int = 0

    def direction(self, gradients: list[Tensor]) -> list[Tensor]:
        previous = self.velocity
        if previous is not None:
            turning = torch.stack([torch.vdot(g.flatten(), u.flatten()) for g, u in zip(gradients, previous)])
            if float(turning.sum()) < 0:  # one synchronisation per step
                previous, self.count = None, 0
        momentum = self.count / (self.count + 3)
        if previous is None:
            velocity = list(gradients)
        else:
            velocity = [torch.add(g, u, alpha=momentum) for g, u in zip(gradients, previous)]
        self.count += 1
        ahead = self.count / (self.count + 3)
        if previous is None:
            directions = [v * (1 + ahead) for v in velocity]
        else:
            directions = [torch.add(v * (1 + ahead), u, alpha=-momentum)
                          for v, u in zip(velocity, previous)]
        self.velocity = velocity
        return directions

    def reset(self) -> None:
        self.velocity, self.count = None, 0


@dataclass
class EvenOddSweep(Solver):
    """Block coordinate descent on a layered Hopfield energy: odd layers, then even layers, each
    block at once (exact block minimisation at step 1 for ReLU, clip, hardsigmoid and linear
    units). Its default step 1.3 over-relaxes (successive over-relaxation): each block's energy
    is then a separable quadratic of curvature 1 per unit, which any step in (0, 2) lowers; for
    tanh, sigmoid or softplus units it is not quadratic, for leaky_relu (no box: its states cross
    the kink) it is quadratic only piece by piece, and a step above 1 can raise the energy, which
    ``step_size="auto"`` (the ep/chl default) answers by halving the step.

    At initialisation of Millidge et al. 2022's MLP the free phase to a residual of 1e-6 takes 15 sweeps at
    1.3 against 30 at 1.0 (``benchmarks/RESULTS.md``)."""

    name: ClassVar[str] = "sweep"
    default_step: ClassVar[float] = 1.3  # over-relaxed (SOR): see HopfieldEnergy.sweep
    check_every: ClassVar[int] = 5

    def coordinates(self, energy) -> Coordinates:
        if not hasattr(energy, "sweep"):
            raise TypeError(f"solver 'sweep' relaxes layered Hopfield energies, not "
                            f"{type(energy).__name__}; use solver='error', 'gd' or 'nesterov'")
        return SweepCoordinates(energy)


SOLVERS: dict[str, type[Solver]] = {
    cls.name: cls for cls in (GradientDescent, ErrorDescent, AndersonErrorDescent, Nesterov, EvenOddSweep)}


def solver_class(name: str) -> type[Solver]:
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}") from None
