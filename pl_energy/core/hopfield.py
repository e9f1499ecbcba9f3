"""The layered Hopfield energy of EP and CHL (Millidge et al. 2022 Eq. 8; Scellier & Bengio 2017).

For layers l = 1..L, each a coupling g_l (``couplings``: W_l u + b_l for a dense layer,
P(W_l * u + b_l) for a convolution with pooling P, Laborieux et al. 2021) and an activation
rho_l (rho_0 = identity on the clamped input x_0), with feedback strength gamma weighting layer
l by c_l = gamma^(l-1):

    E = sum_l c_l [ 1/2 ||x_l||^2 - rho_l(x_l) . g_l(rho_{l-1}(x_{l-1})) ] + beta * L(x_L, y)

    dE/dx_l = c_l [x_l - rho_l'(x_l) h_l] - c_{l+1} rho_l'(x_l) J_{l+1}^T rho_{l+1}(x_{l+1})
              (+ beta dL/dx_L at the output),  h_l = g_l(rho_{l-1}(x_{l-1})),
              J_{l+1} = dg_{l+1}/du at u = rho_l(x_l)  (W_{l+1} for a dense layer)
    dE/dtheta_l = -c_l (dg_l/dtheta_l)^T rho_l(x_l)   (dense: dE/dW_l = -c_l rho(x_l) rho(x_{l-1})^T)

Inference steps are preconditioned by 1/c_l, so at every layer the top-down input is weighted
by gamma relative to the bottom-up one (Xie & Seung 2003; Millidge et al. 2022 Eq. 18). With
gamma = 1 this is Scellier & Bengio's energy. A layer is its coupling followed by one
activation, e.g. ``Sequential(Linear, Clip)`` (as ``mlp`` builds), ``Sequential(Conv2d,
MaxPool2d, Clip)`` or ``Sequential(Flatten, Linear)``; without a trailing activation rho_l is
the identity (the usual output layer).

Activations with flat regions (ReLU; clip, flat outside [0, 1]; hardsigmoid, flat outside
[-3, 3]) have their minimum in x_l inside the interval where rho_l is linear: beyond it the
energy is 1/2 x^2 - const, which rises away from it. So the states are kept in that interval
(ReLU: x >= 0, clip: 0 <= x <= 1, hardsigmoid: -3 <= x <= 3) with rho_l linear there, and inference is projected descent: a state on a bound
whose gradient points outwards has a projected gradient of 0 (the first-order optimality, KKT,
condition of the bound), and every step is clipped back to the interval. This is how Scellier &
Bengio 2017 relax their hard-sigmoid units; with rho'(0) = 0 taken literally instead, a ReLU
unit that the feedforward pass leaves at exactly 0 could never switch on, whatever its drive.

Units without flat regions (tanh, sigmoid, softplus, leaky_relu) leave the states free, with
rho_l' in closed form (``core.activations``). Non-monotone units (GELU, SiLU) are refused
(``check_unit``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .activations import DERIVATIVES, Clip, derivatives_of
from .couplings import make_coupling, split_layer
from .losses import Loss
from .networks import feedforward, layers_of
from .own_forward import computes_itself


@dataclass(frozen=True)
class Box:
    """The interval [low, high] (None: unbounded) where an activation is linear with ``slope``."""

    low: float | None
    high: float | None
    slope: float

    def project_gradient(self, x: Tensor, gradient: Tensor) -> Tensor:
        """0 where x sits on a bound and the gradient points out of the interval: the gradient
        clamped to [lower, upper], upper = 0 where x <= low (else the dtype's largest number),
        lower = 0 where x >= high. Built from clamp and sign: comparisons and ``torch.where``
        took about 1/6 of an ep estimate's time on the seed MLP (CPU). The same numbers at every
        finite gradient (a non-finite one comes with a non-finite energy, which inference
        refuses)."""
        largest = torch.finfo(x.dtype).max
        upper = None if self.low is None else torch.sub(x, self.low).clamp_(min=0).sign_().mul_(largest)
        lower = None if self.high is None else torch.rsub(x, self.high).clamp_(min=0).sign_().mul_(-largest)
        return gradient.clamp(lower, upper)

    def project(self, x: Tensor) -> Tensor:
        return x.clamp(self.low, self.high)


BOXES: dict[type[nn.Module], Box] = {nn.ReLU: Box(0.0, None, 1.0), nn.Hardsigmoid: Box(-3.0, 3.0, 1 / 6),
                                     Clip: Box(0.0, 1.0, 1.0)}


def _hardsigmoid(x: Tensor) -> Tensor:
    """torch's hardsigmoid, written so that autograd can differentiate it twice (the implicit
    reference needs Hessian-vector products; aten's hardsigmoid_backward has no derivative)."""
    return torch.nn.functional.relu6(x + 3) / 6


MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)

#: Units that are not monotone: rho' < 0 below x = -0.75 (GELU) and x = -1.28 (SiLU).
NON_MONOTONE: tuple[type[nn.Module], ...] = (nn.GELU, nn.SiLU)


def check_unit(rho: nn.Module | None, index: int) -> None:
    """Refuse, in one line, a unit rho_l the Hopfield energy cannot use.

    - Not monotone (GELU, SiLU): a unit's own energy 1/2 x^2 - rho(x) h has, for a strong drive
      h > 0 (above about 10.2 for GELU, 22 for SiLU), a second minimum at x < 0 where rho' < 0
      (GELU, h = 12: x = -1.52 beside x = 12), so a strongly
      driven unit can rest on its wrong side: no longer the firing-rate network of Scellier &
      Bengio 2017 that EP and CHL assume. Monotone units (relu, clip, hardsigmoid, sigmoid, tanh,
      leaky_relu, softplus) have one minimum per unit, on the side of h.
    - Without a box and applied in place (``LeakyReLU(inplace=True)``): evaluating rho_l would
      overwrite the state x_l.
    """
    if rho is None:
        return
    if isinstance(rho, NON_MONOTONE):
        raise ValueError(
            f"layer {index}'s {type(rho).__name__} is not monotone, which the Hopfield energy of ep/chl "
            "needs (a strongly driven unit can rest on its wrong side); use clip, hardsigmoid, sigmoid, "
            "tanh, relu, leaky_relu or softplus (GELU and SiLU train with bp, pc, pc_nudge and z_il)")
    if type(rho) not in BOXES and derivatives_of(rho) is None:
        if getattr(rho, "inplace", False):
            raise ValueError(f"layer {index}'s {rho!r} would overwrite the states of the Hopfield energy of ep/chl: "
                             "build it without inplace=True")
        raise ValueError(f"layer {index}'s {rho!r} has no closed-form derivative the Hopfield energy of ep/chl can "
                         "use (a subclass computes its own function; a setting may be unknown): use PyTorch's unit "
                         "itself, or train with bp, pc, pc_nudge or z_il")


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


def check_own_forwards(layer: nn.Module, index: int) -> None:
    """The Hopfield energy reads its couplings and units off the modules themselves: a
    parametrized weight (its gradient would belong to other tensors) is refused in one line;
    forward hooks, which do not act there, are warned about (observers such as Lightning's
    profiler change nothing; a hook that changes a value changes what bp trains, not what ep/chl
    estimate)."""
    for module in layer.modules():
        if "parametrizations" in module._modules:
            raise TypeError(f"layer {index} has a {type(module).__name__} with a parametrized weight: the Hopfield "
                            "energy of EP/CHL couples layers through the weight itself, not the tensors it is computed "
                            "from; remove the parametrization, or train with a predictive-coding algorithm")
        if not computes_itself(module):
            warnings.warn(f"layer {index} has a {type(module).__name__} with module hooks, which do not "
                          "act in the Hopfield energy of EP/CHL (it reads couplings and units off the modules): a hook "
                          "that changes a value changes what bp trains but not what ep/chl estimate", UserWarning,
                          stacklevel=5)
            return


class HopfieldEnergy:
    """Layered Hopfield energy over a stack of dense or convolutional layers."""

    def __init__(self, network: nn.Module, loss: Loss, gamma: float = 1.0):
        self.layers = layers_of(network)
        self.loss = loss
        if not gamma > 0:
            raise ValueError(f"gamma (feedback strength) must be > 0, got {gamma}")
        self.gamma = float(gamma)
        self.couplings = []
        self.rhos: list[nn.Module | None] = []
        for index, layer in enumerate(self.layers, start=1):
            check_own_forwards(layer, index)
            coupling, rho = split_layer(layer, tuple(DERIVATIVES))
            check_unit(rho, index)
            self.couplings.append(make_coupling(coupling, index))
            self.rhos.append(rho)
        self.weights = [self.gamma ** index for index in range(len(self.layers))]
        self.boxes = [None if rho is None else BOXES.get(type(rho)) for rho in self.rhos]
        self.derivatives = [None if rho is None or box is not None else derivatives_of(rho)
                            for rho, box in zip(self.rhos, self.boxes)]
        #: rho_l(x) = x on the box (clip, ReLU): a state kept in its box is its own value
        self.identity_in_box = [box is not None and box.slope == 1.0 for box in self.boxes]
        #: every unit linear inside a box (or the identity) and no max-pool (whose switches make a
        #: layer's top-down input depend on its own state): each block of a sweep is a quadratic
        #: minimised exactly, piece by piece, as SOR theory needs (``core.adaptive_sweep``)
        self.quadratic_blocks = (all(rho is None or box is not None for rho, box in zip(self.rhos, self.boxes))
                                 and not any(isinstance(part, MAX_POOLS) for layer in self.layers
                                             for part in layer.modules()))
        #: the over-relaxation factor the last phase on these weights found (``core.adaptive_sweep``)
        self.over_relaxation: float | None = None

    def _value(self, index: int, x: Tensor) -> Tensor:
        """rho_l(x) for layer l (index 0 is the input: identity)."""
        rho = self.rhos[index - 1] if index > 0 else None
        if rho is None:
            return x
        return _hardsigmoid(x) if isinstance(rho, nn.Hardsigmoid) else rho(x)

    def _state_values(self, state: HopfieldState) -> list[Tensor]:
        """rho_l(x_l) for every layer of a state: x_l itself for the free layers inference keeps
        in their boxes where rho_l is the identity on the box (clip, ReLU), the same numbers
        without a call per layer and step; rho_l(x_l) for the input and a clamped output (the
        target need not lie in the box). Not for autograd: at a bound rho's derivative is not
        the identity's."""
        free = self.free_layers(state)
        return [x if index in free and self.identity_in_box[index - 1] else self._value(index, x)
                for index, x in enumerate(state.activities)]

    def _slope(self, index: int, x: Tensor, value: Tensor) -> Tensor | float | None:
        """rho_l'(x) (inside the box for activations with flat regions), or None for slope 1."""
        rho = self.rhos[index - 1] if index > 0 else None
        if rho is None:
            return None
        box = self.boxes[index - 1]
        if box is not None:
            return None if box.slope == 1.0 else box.slope
        return self.derivatives[index - 1].derivative(x, value)

    # --- states -------------------------------------------------------------------------------
    def free_state(self, inputs: Tensor, targets: Tensor | None) -> HopfieldState:
        """Starts from the network's feedforward pass; relax it to reach the free equilibrium.

        ``targets`` may be None for prediction (the free phase does not read them).
        """
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

    def nudged(self, state: HopfieldState, beta: float) -> HopfieldState:
        return HopfieldState(list(state.activities), state.targets, beta=beta,
                             input_drive=state.input_drive)

    def mirrored(self, state: HopfieldState, centre: HopfieldState, beta: float) -> HopfieldState:
        """2 centre - state in every free layer, projected onto its box, relaxing under ``beta``:
        from the +beta equilibrium x+ = x0 + beta v + O(beta^2) around the free one x0, the
        -beta one's first-order guess x0 - beta v, O(beta^2) from it (a warm start that leaves
        the equilibrium, and so the estimate, as it is)."""
        activities = [centre.activities[0]]
        for index, (x, x0) in enumerate(zip(state.activities[1:], centre.activities[1:]), start=1):
            box = self.boxes[index - 1]
            guess = torch.add(x0, x, alpha=-1).add_(x0)
            activities.append(guess if box is None else box.project(guess))
        return HopfieldState(activities, centre.targets, beta=beta, input_drive=centre.input_drive)

    def displacement_per_unit(self, free: HopfieldState) -> float:
        """||dL/dx_L|| / (c_L ||x_L||): how far, relative to the output, one unit of beta moves
        it at first order when only its own 1/2 c_L ||x_L||^2 holds it (the feedback of the
        layer below only shortens the move, and the layers below move less)."""
        output = free.output
        pull = self.loss.per_sample_gradient(output, free.targets).norm()
        return float(pull / (self.weights[-1] * output.norm().clamp_min(torch.finfo(output.dtype).tiny)))

    def clamped(self, state: HopfieldState) -> HopfieldState:
        """Output clamped to x_L - dL/dx_L (the target itself for ``mse``)."""
        activities = list(state.activities)
        output = activities[-1]
        activities[-1] = output - self.loss.per_sample_gradient(output, state.targets)
        return HopfieldState(activities, state.targets, clamped=True, input_drive=state.input_drive)

    # --- the energy and its gradients ---------------------------------------------------------
    def activity_gradients(self, state: HopfieldState) -> list[Tensor]:
        """dE/dx_l = c_l [x_l - rho_l'(x_l) (h_l + gamma W_{l+1}^T rho_{l+1}(x_{l+1}))] (+ nudge),
        projected at the bounds of activations with flat regions."""
        values = self._state_values(state)
        return [self._layer_gradient(state, values, index) for index in self.free_layers(state)]

    def scaled_gradients(self, state: HopfieldState) -> list[Tensor]:
        """dE/dx_l / c_l, the gradients in the units the sweeps move by (Xie & Seung 2003's
        preconditioning; no multiplication by c_l to undo at the move), projected."""
        values = self._state_values(state)
        return [self._layer_gradient(state, values, index, weighted=False) for index in self.free_layers(state)]

    def sweep_gradients(self, state: HopfieldState) -> list[Tensor | None]:
        """What a ``sweep`` reads: the odd layers' ``scaled_gradients``, not projected (the move
        is projected onto the box, which stops an outward step at its bound as the projected
        gradient would: the same state), None for the even ones, which the sweep computes itself
        after moving the odd ones."""
        values = self._state_values(state)
        return [self._layer_gradient(state, values, index, projected=False, weighted=False)
                if index % 2 == 1 else None for index in self.free_layers(state)]

    def free_layers(self, state: HopfieldState) -> range:
        return range(1, len(self.layers) if state.clamped else len(self.layers) + 1)

    def _layer_gradient(self, state: HopfieldState, values: list[Tensor], index: int,
                        projected: bool = True, weighted: bool = True) -> Tensor:
        """dE/dx_l (``weighted``) or dE/dx_l / c_l, projected at the box's bounds or not."""
        x = state.activities
        depth = len(self.layers)
        drive = self.input_drive(state) if index == 1 else self.couplings[index - 1].forward(values[index - 1])
        if index < depth:
            drive = self.couplings[index].add_transpose(drive, values[index], values[index + 1], self.gamma)
        slope = self._slope(index, x[index], values[index])
        gradient = x[index] - (drive if slope is None else slope * drive)
        weight = self.weights[index - 1]
        if weighted and weight != 1.0:
            gradient = weight * gradient
        if index == depth and state.beta:
            gradient = torch.add(gradient, self.loss.per_sample_gradient(x[index], state.targets),
                                 alpha=state.beta if weighted else state.beta / weight)
        box = self.boxes[index - 1]
        return gradient if box is None or not projected else box.project_gradient(x[index], gradient)

    def sweep(self, state: HopfieldState, gradients: list[Tensor], step_size: float,
              output_step_size: float | None = None) -> None:
        """One even/odd sweep: the odd layers step with ``gradients`` (``scaled_gradients`` or
        ``sweep_gradients`` at the current state), then the even layers with their gradients at
        the moved odd layers; the output layer steps by ``output_step_size`` when given (else
        ``step_size``).

        Layers of one parity do not interact, so at step 1 with ReLU, hardsigmoid or linear
        units and affine couplings each half is the exact minimisation over its layers given the
        others (x_l = the projection of rho_l' times its net input): block coordinate descent,
        the asynchronous relaxation of Scellier & Bengio 2017's code. With max-pooling the
        top-down input depends on the layer's own state (the pool's switches), and a sweep is
        the fixed-point update of Laborieux et al. 2021. A step above 1 over-relaxes (SOR).

        ``gradients`` may be projected or not: each move is projected onto the layer's box,
        which stops an outward step at its bound where the projected gradient is 0 (the same
        state), so the sweep computes the even layers' unprojected.
        """
        free = self.free_layers(state)
        odd = [(index, gradients[index - 1]) for index in free if index % 2 == 1]
        self._move(state, odd, step_size, output_step_size, scaled=True)
        values = self._state_values(state)
        even = [(index, self._layer_gradient(state, values, index, projected=False, weighted=False))
                for index in free if index % 2 == 0]
        self._move(state, even, step_size, output_step_size, scaled=True)

    def local_terms(self, state: HopfieldState) -> list[Tensor]:
        """c_l x_l, the part of dE/dx_l from layer l's own 1/2 ||x_l||^2 (free layers only)."""
        return [state.activities[index] if self.weights[index - 1] == 1.0
                else self.weights[index - 1] * state.activities[index] for index in self.free_layers(state)]

    def scaled_local_terms(self, state: HopfieldState) -> list[Tensor]:
        """x_l: the local terms in the units of ``scaled_gradients``."""
        return [state.activities[index] for index in self.free_layers(state)]

    def input_drive(self, state: HopfieldState) -> Tensor:
        """h_1 = g_1(x_0): the input is clamped, so it is computed once per batch."""
        if state.input_drive is None:
            state.input_drive = self.couplings[0].forward(state.activities[0])
        return state.input_drive

    def move_activities(self, state: HopfieldState, gradients: list[Tensor], step_size: float) -> None:
        """x_l <- x_l - step_size / c_l * gradient_l, projected onto the layer's box."""
        self._move(state, list(enumerate(gradients, start=1)), step_size)

    def _move(self, state: HopfieldState, moves: list[tuple[int, Tensor]], step_size: float,
              output_step_size: float | None = None, scaled: bool = False) -> None:
        """x_l <- x_l - step / c_l * gradient_l (``scaled``: the gradients are already divided
        by c_l), projected onto the layer's box."""
        for index, gradient in moves:
            step = output_step_size if index == len(self.layers) and output_step_size is not None else step_size
            moved = torch.add(state.activities[index], gradient,
                              alpha=-step if scaled else -step / self.weights[index - 1])
            box = self.boxes[index - 1]
            state.activities[index] = moved if box is None else box.project(moved)

    def components(self, state: HopfieldState) -> tuple[Tensor, Tensor, Tensor]:
        """(I, L, I + beta L) as batch means, with the couplings as constants and the values as
        ``_state_values`` reads them."""
        with torch.no_grad():
            internal = self._internal_mean(state)
            supervised = (self.loss.value(state.output, state.targets) if state.targets is not None
                          else internal.new_zeros(()))
        return internal, supervised, internal + state.beta * supervised

    def total(self, state: HopfieldState) -> Tensor:
        """I + beta L as a batch mean, what inference watches: I alone where beta = 0 (the free
        and clamped phases), whose L is not part of their energy."""
        if not state.beta:
            with torch.no_grad():
                return self._internal_mean(state)
        return self.components(state)[2]

    def _internal_mean(self, state: HopfieldState) -> Tensor:
        values = self._state_values(state)
        drives = [self.input_drive(state)] + [coupling.forward(values[index])
                                              for index, coupling in enumerate(self.couplings[1:], start=1)]
        return self._layered_sum(state.activities, values, drives) / state.activities[0].shape[0]

    def internal_energy(self, activities: list[Tensor], input_drive: Tensor | None = None) -> Tensor:
        """Sum over the batch of I(x); differentiable in x and in the parameters (pass the
        clamped input's drive h_1 when it is known and no gradient through W_1 is needed)."""
        values = [self._value(index, x) for index, x in enumerate(activities)]
        drives = [input_drive if index == 1 and input_drive is not None else coupling.module(values[index - 1])
                  for index, coupling in enumerate(self.couplings, start=1)]
        return self._layered_sum(activities, values, drives)

    def _layered_sum(self, activities: list[Tensor], values: list[Tensor], drives: list[Tensor]) -> Tensor:
        """sum_l c_l [1/2 ||x_l||^2 - rho_l(x_l) . h_l] over the batch, from the values rho_l(x_l)
        and the drives h_l (three operations and one sum per layer)."""
        total = None
        for index, drive in enumerate(drives, start=1):
            x, weight = activities[index], self.weights[index - 1]
            negated = torch.addcmul(values[index] * drive, x, x, value=-0.5).sum()  # minus layer l's term
            total = negated * -weight if total is None else torch.add(total, negated, alpha=-weight)
        return total

    def parameter_gradients(self, state: HopfieldState, scale: float = 1.0) -> list[list[Tensor]]:
        """scale * dE/dtheta of the batch-mean energy at ``state``, per layer in ``parameters()``
        order: dE/dtheta_l = -c_l (dg_l/dtheta_l)^T rho(x_l)."""
        return self._parameter_vjps([(state, 1.0)], scale)

    def parameter_gradient_difference(self, state: HopfieldState, minus: HopfieldState,
                                      scale: float = 1.0) -> list[list[Tensor]]:
        """scale * (dE/dtheta at ``state`` - dE/dtheta at ``minus``): the contrast of two phases
        of this energy, as one vector-Jacobian product of the phases stacked along the batch
        (for a dense layer one matrix product, so no weight-sized intermediate is formed), or of
        their difference where both phases share the rows below (the first layer's clamped
        input: half the products). A speed path: the same numbers as the difference of two
        ``parameter_gradients``, to rounding."""
        return self._parameter_vjps([(state, 1.0), (minus, -1.0)], scale)

    def _parameter_vjps(self, phases: list[tuple[HopfieldState, float]], scale: float) -> list[list[Tensor]]:
        batch = phases[0][0].activities[0].shape[0]
        grads = []
        for index, coupling in enumerate(self.couplings, start=1):
            factor = -self.weights[index - 1] * scale / batch
            belows = [self._value(index - 1, phase.activities[index - 1]) for phase, _ in phases]
            aboves = [self._value(index, phase.activities[index]) for phase, _ in phases]
            if all(below is belows[0] for below in belows[1:]):
                # the same rows below in every phase (the clamped input): the VJP is linear in
                # the rows above, so they are summed first, one product of one batch
                above = aboves[0] * (phases[0][1] * factor)
                for value, (_, sign) in zip(aboves[1:], phases[1:]):
                    above = torch.add(above, value, alpha=sign * factor)
                grads.append(coupling.parameter_vjp(belows[0], above))
            else:
                grads.append(coupling.parameter_vjp(
                    torch.cat(belows), torch.cat([value * (sign * factor) for value, (_, sign) in zip(aboves, phases)])))
        return grads
