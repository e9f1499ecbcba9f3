"""Even/odd sweeps over-relaxed by a factor read off their own contraction: ``solver="adaptive_sweep"``.

The layered Hopfield energy couples only adjacent layers, so with the odd layers as one block
and the even ones as the other, its block Jacobi matrix B is two-cyclic and the even/odd order
consistent (Young 1971, Ch. 5-6). Inside the boxes of clip, ReLU or hardsigmoid units (and for
linear units) the energy is quadratic, each block step at factor omega is SOR, and the
eigenvalues lambda of the SOR iteration and mu of B satisfy

    (lambda + omega - 1)^2 = lambda omega^2 mu^2,

so Gauss-Seidel (omega = 1) contracts at mu^2, and the factor

    omega_opt = 2 / (1 + sqrt(1 - mu^2))

contracts at omega_opt - 1, the fastest of all omega; below omega_opt the dominant lambda is
real, above it every |lambda| = omega - 1. mu grows as training strengthens the couplings: on
Millidge et al. 2022's MLP 784-128-64-10 with clip units and real MNIST, the free phase at
omega = 1 takes 30 sweeps at initialisation and 65-155 after 25-200 Adam steps of EP, so
``sweep``'s fixed 1.3, near omega_opt at initialisation, turns slow (15-135 sweeps per phase).

Here the factor follows the observed rate (the adaptive SOR of Hageman & Young 1981, Ch. 9):
the ratio r_k = ||m_k|| / ||m_{k-1}|| of the norms of successive moves of the odd layers is read
(``READ_EVERY`` at a time). Each move m_k is the factor times the odd layers' projected gradient
before the sweep (clipped where a unit reaches its bound), so at one factor the ratio is that of
successive projected gradients, and in the linear regime every linear function of the error
shrinks at the dominant rate. Once ``SETTLED`` successive ratios agree to ``AGREEMENT`` (the
power iteration has settled on the dominant lambda) and r > omega - 1 (so omega is below the optimum and r estimates the real
lambda), mu^2 = (r + omega - 1)^2 / (r omega^2) and omega rises to omega_opt(mu), at most
``LARGEST_FACTOR``. The factor never falls within a phase (an overestimate costs little:
the rate is then omega - 1); the next phase of the same batch (EP's nudged phases, CHL's clamped
one: the same couplings) starts from it (``HopfieldEnergy.over_relaxation``).

What does not change: the fixed points. A state is a fixed point of the projected sweep at any
omega in (0, 2) exactly where the projected gradient vanishes (the KKT conditions of the box),
and the stopping rule is ``relax``'s: the same relative residual, the same ``tol``, the same
energy watch. Projected SOR lowers the quadratic block energy at any omega in (0, 2); two
parts are kept as in ``sweep``:

- a nudged output (E + beta L): its block energy has curvature c_L plus beta times the loss's,
  so it keeps the starting factor (an over-relaxed step can overshoot its minimum: with 1.7 on
  every layer the +beta phases of the checkpoints above took 65-125 sweeps, 20-65 with the
  output kept at 1.3);
- units that are not piecewise linear (tanh, sigmoid, softplus, leaky_relu without a box) and
  max-pooling couplings (a layer's top-down input then depends on its own state): a sweep is a
  descent step or a fixed-point update there, not an exact block minimisation, and the factor
  stays fixed (on VGG-5 with max-pooling, adapting it made EP slower than ``sweep``).

Measured on that MLP along the first 200 batches of EP's training (centered, beta = 0.5,
``benchmarks/probe_training.py``): a median of 105 sweeps per batch over the three phases
against 157.5 with ``sweep``. The equilibria are the same to the tolerance: in float64 the EP
gradients of the two solvers at nine checkpoints differ by at most 1.0e-6 of their largest entry
(tol 1e-6). Not every batch gains: a phase whose units keep crossing their bounds can take a
few sweeps more than at 1.3.

A back-off (``step_size="auto"`` halving the step after the energy rose) ends the adaptation for
the phase: the halved step is then used as given, on every layer. The report's ``step_size`` is
the step ``relax`` passed (the starting factor, or the halved one), not the adapted factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from .solvers import SOLVERS, EvenOddSweep, SweepCoordinates

#: This many successive contraction ratios that differ by at most ``AGREEMENT`` (relative)
#: are taken as the dominant eigenvalue's.
SETTLED = 2
AGREEMENT = 0.1
#: The norms are read back to the host this many sweeps at a time: one synchronisation per
#: READ_EVERY sweeps, not per sweep, for accelerators (on the seed MLP's checkpoints 830 sweeps
#: against 820 read at every sweep: a raise comes up to three sweeps later).
READ_EVERY = 4
#: The largest over-relaxation factor (below 2, where SOR stops converging). Units crossing the
#: bounds of their boxes make the early sweeps piecewise-linear, not linear; on the seed MLP's
#: checkpoints along training (``benchmarks/probe_training.py``) a cap of 1.8 or 1.9 took more
#: sweeps than 1.7 (they over-relax those crossings), 1.6 about as many.
LARGEST_FACTOR = 1.7


def optimal_factor(ratio: float, factor: float) -> float:
    """omega_opt from the contraction ``ratio`` observed at SOR factor ``factor`` (below the
    optimum): mu^2 = (r + omega - 1)^2 / (r omega^2), omega_opt = 2 / (1 + sqrt(1 - mu^2))."""
    mu_squared = min((ratio + factor - 1) ** 2 / (ratio * factor ** 2), 1.0)
    return 2 / (1 + math.sqrt(1 - mu_squared))


@dataclass
class AdaptiveSweepCoordinates(SweepCoordinates):
    """The activities of a layered Hopfield energy, swept at a factor that follows the observed
    contraction (module docstring). One relaxation's memory: build one per ``relax``."""

    factor: float | None = None
    given: float | None = None  # the step relax passed last; a change is a back-off
    norms: list[float] = field(default_factory=list)  # ||m_k|| of the odd layers' moves since the factor changed
    ratios: list[float] = field(default_factory=list)
    pending: list[Tensor] = field(default_factory=list)  # per-layer norms of moves not yet read back
    frozen: bool = False

    def __post_init__(self):
        self.frozen = not getattr(self.energy, "quadratic_blocks", False)

    def move(self, state, directions: list[Tensor], step_size: float) -> None:
        if self.given is not None and step_size != self.given:  # a back-off: the step as given
            self.frozen, self.factor = True, step_size
            self.energy.over_relaxation = None
        self.given = step_size
        if self.factor is None:
            self.factor = max(step_size, self.energy.over_relaxation or 0.0)
        odd = state.activities[1::2]  # the sweep replaces the states, it does not change them
        self.energy.sweep(state, directions, self.factor, output_step_size=step_size if state.beta else None)
        if self.frozen:
            return
        self.pending += torch._foreach_norm(torch._foreach_sub(state.activities[1::2], odd))  # per layer
        if len(self.pending) == READ_EVERY * len(odd):  # one host synchronisation for several sweeps
            factor, read = self.factor, torch.stack(self.pending).view(READ_EVERY, len(odd)).tolist()
            self.pending = []
            for layers in read:
                norm = math.sqrt(sum(layer * layer for layer in layers))
                self._observe(norm)
                if self.factor != factor:  # the rest was swept at the old factor
                    break

    def _observe(self, norm: float) -> None:
        """Raise the factor once ``SETTLED`` successive contraction ratios agree (module docstring)."""
        if self.norms and self.norms[-1] > 0:
            self.ratios.append(norm / self.norms[-1])
        self.norms.append(norm)
        recent = self.ratios[-SETTLED:]
        if len(recent) < SETTLED or not all(self.factor - 1 < ratio < 1 for ratio in recent):
            return
        if max(recent) - min(recent) > AGREEMENT * recent[-1]:
            return
        better = min(optimal_factor(recent[-1], self.factor), LARGEST_FACTOR)
        if better > self.factor:
            self.factor = self.energy.over_relaxation = better
            self.norms, self.ratios = [], []  # the new factor's transient first
            self.frozen = better >= LARGEST_FACTOR  # nothing left to raise: no more watching


@dataclass
class AdaptiveEvenOddSweep(EvenOddSweep):
    """``sweep`` with its over-relaxation factor raised towards the optimum its own contraction
    implies (module docstring); ``step_size`` is the starting factor."""

    name: ClassVar[str] = "adaptive_sweep"

    def coordinates(self, energy) -> AdaptiveSweepCoordinates:
        super().coordinates(energy)  # refuses energies without sweeps
        return AdaptiveSweepCoordinates(energy)


SOLVERS[AdaptiveEvenOddSweep.name] = AdaptiveEvenOddSweep
