"""The nudge as a finite-difference step: its automatic size and the estimate's own error.

The contrastive estimates (PC-Nudge, EP) are difference quotients of equilibria in the nudge
strength h (lam or beta; Millidge et al. 2022 Eqs. 21, 24; Scellier & Bengio 2017):

    one-sided:  g(h) = (dE/dtheta(x_h) - dE/dtheta(x_0)) / h            = g + O(h),
    centered:   g(h) = (dE/dtheta(x_h) - dE/dtheta(x_-h)) / (2 h)       = g + O(h^2).

A step that is too large leaves an O(h) (O(h^2)) bias that grows with training; one that is
too small lets rounding win, by eps / h when the displacement is formed as a difference of two
O(1) states. The classical optimum balances the two (Press et al. 2007, Numerical Recipes,
Sec. 5.7): a relative step of eps^(1/2) one-sided and eps^(1/3) centered, eps the dtype's
machine epsilon. ``finite_difference_step`` gives it; an energy turns it into a nudge strength by
its first-order response (how far one unit of nudge moves the state, relative to the state).

Where the displacement is carried in difference form (the PC energy's error coordinates,
``PCState.carried``) there is no eps / h term: the errors are the variables, each exact to
rounding relative to itself, and the state x = mu + eps enters the estimate only through
Jacobians and the loss gradient, where rounding it costs O(eps) relative, whatever h is. The
error then falls as C h down to the rounding floor of backprop itself, and nothing is gained by
stopping above it: measured in float32 against float64 backprop, one batch into training
(``benchmarks/RESULTS.md``), the worst layer's error of PC-Nudge fell linearly with lam from
the eps^(1/2) step down to float32 backprop's own error (4e-7 to 6e-6) and stayed there down to
1e-8 times that step, on a 10-layer tanh MLP, Millidge et al. 2022's ReLU MLP, VGG-5 with
average pooling and a ResNet. The carried step is therefore one rounding unit, h = eps, for
one-sided and centered differences alike (the bias C eps is at the floor). On piecewise-linear
networks a small step matters for more than the bias: the units a nudge moves across a kink
have no equilibrium on either side, and their number grows with h (``core.kinks``).
"""

from __future__ import annotations

import math

import torch


def finite_difference_step(dtype: torch.dtype, centered: bool, carried: bool = False) -> float:
    """The relative finite-difference step that balances bias and rounding in ``dtype``:
    eps^(1/2) for a one-sided difference, eps^(1/3) for a centered one, and eps for a
    displacement ``carried`` in difference form (its rounding does not grow as it shrinks)."""
    epsilon = torch.finfo(dtype).eps
    if carried:
        return epsilon
    return epsilon ** (1 / 3) if centered else math.sqrt(epsilon)


def automatic_strength(step: float, displacement_per_unit: float) -> float:
    """The nudge strength h whose first-order displacement, h * ``displacement_per_unit``
    (relative to the state), equals ``step``; 1 when the nudge moves nothing (a batch the loss
    no longer pulls on: every strength then gives the same, zero, update)."""
    if not displacement_per_unit > 0 or not math.isfinite(displacement_per_unit):
        return 1.0
    strength = step / displacement_per_unit
    if not math.isfinite(1 / strength):  # the estimate's 1/h would overflow: never silently
        raise FloatingPointError(f"the automatic nudge came out as {strength:.3g}, whose reciprocal overflows "
                                 f"(a first-order move of {displacement_per_unit:.3g} per unit nudge): give a "
                                 "fixed nudge (lam or beta) and check the network for exploding activities")
    return strength
