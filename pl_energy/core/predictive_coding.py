"""The predictive-coding energy with a supervised term (Millidge et al. 2022 Eqs. 3, 10, 25; Song et al. 2020 Eq. 14).

For layers l = 1..L with predictions mu_l = layer_l(x_{l-1}) and errors eps_l = x_l - mu_l,

    E = I + lam * L,   I = sum_{l=1}^{L-1} pi_l / 2 * ||eps_l||^2,   L = loss(mu_L, y),

x_0 is clamped to the input, x_1..x_{L-1} are free and the output enters only through the loss
(with ``mse`` and lam = 1 this is the PC network with its output clamped to the target). Writing
d_l = dE/dmu_l (d_l = -pi_l eps_l inside, d_L = lam dL/dmu_L at the output):

    dE/dx_l     = -d_l + J_{l+1}(x_l)^T d_{l+1}          (Millidge et al. 2022 Eq. 4, Song et al. 2020 Eq. 7)
    dE/dtheta_l = (d mu_l / d theta_l)^T d_l            (Millidge et al. 2022 Eq. 5, Song et al. 2020 Eq. 9)

At the free equilibrium (the feedforward pass) every eps_l is 0, so dE/dx_{L-1} = lam dL/dx_{L-1}
and each layer's first move is lam times BP's adjoint (Millidge et al. 2022 Eqs. 12-15). Inference steps are
preconditioned by 1/pi_l, which makes the precision ratio pi_{l+1}/pi_l the feedback strength of
Millidge et al. 2022 Eq. 18: dx_l = -eps_l + (pi_{l+1}/pi_l) J^T eps_{l+1}.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .activations import derivatives_of
from .linearization import DerivativesOf, LayerLinearizer, Linearization
from .losses import Loss
from .moves import descend, divide
from .networks import layers_of, raise_naming


@dataclass
class PCState:
    """Activities x_0..x_{L-1}, each layer linearised at its current input, and the weight lam of
    the supervised term this state relaxes under (the nudge lives in the state, as the Hopfield
    state's beta does: ``PredictiveCodingEnergy.nudged``).

    ``carried`` holds errors in difference form: for a hidden layer l, (x_l, linearisation of
    layer l, eps_l) where x_l was set to mu_l + eps_l. While x_l and mu_l are still those tensors,
    eps_l is read from here instead of being formed as x_l - mu_l: that subtraction cancels all
    but about eps_dtype |x_l| / |eps_l| of its bits, which for a weak nudge (|eps_l| ~ lam |x_l|)
    is most of the estimate in float32. Carried, a nudge far below float32's resolution of the
    activities stays exact (the displacement is the variable, not a difference of two states).
    """

    activities: list[Tensor]
    linearizations: list[Linearization]
    targets: Tensor
    lam: float | Tensor = 1.0
    carried: dict[int, tuple[Tensor, Linearization, Tensor]] = field(default_factory=dict)
    #: (output, dl/dmu_L per sample there): the latest output's loss gradient, which several
    #: passes read (``PredictiveCodingEnergy.output_gradient``)
    output_gradient: tuple[Tensor, Tensor] | None = None

    @property
    def output(self) -> Tensor:
        return self.linearizations[-1].output

    def carried_error(self, index: int) -> Tensor | None:
        """eps_l in difference form, if x_l and mu_l are still the ones it was set with."""
        entry = self.carried.get(index)
        if entry is not None and entry[0] is self.activities[index] and entry[1] is self.linearizations[index - 1]:
            return entry[2]
        return None


class PredictiveCodingEnergy:
    """E = sum pi_l/2 ||x_l - layer_l(x_{l-1})||^2 + lam * loss(layer_L(x_{L-1}), y)."""

    def __init__(self, network: nn.Module, loss: Loss, precisions: Sequence[float] | None = None,
                 derivatives: DerivativesOf = derivatives_of):
        """``derivatives``: the activations' closed-form derivatives (``LayerLinearizer``)."""
        self.layers = layers_of(network)
        self.loss = loss
        hidden = len(self.layers) - 1
        self.precisions = [1.0] * hidden if precisions is None else [float(p) for p in precisions]
        if len(self.precisions) != hidden:
            raise ValueError(f"need {hidden} precisions (one per hidden layer), got {len(self.precisions)}")
        if any(not p > 0 for p in self.precisions):
            raise ValueError(f"precisions must be positive, got {self.precisions}")
        self.linearizers = [
            LayerLinearizer(layer, needs_input_vjp=index > 0, derivatives=derivatives)
            for index, layer in enumerate(self.layers)
        ]

    # --- states -------------------------------------------------------------------------------
    def linearize(self, index: int, x: Tensor) -> Linearization:
        """Layer ``index`` (1-based) linearised at input x."""
        try:
            return self.linearizers[index - 1](x)
        except RuntimeError as error:  # a shape error names the layer and the shapes
            raise_naming(error, self.layers[index - 1], index, x)

    def first_input(self, state: PCState) -> Tensor:
        """x_0, as the first layer may be called on it: a copy where that layer computes in place
        (``LayerLinearizer.in_place``), so that the batch stays as it is."""
        return state.activities[0].clone() if self.linearizers[0].in_place else state.activities[0]

    def free_state(self, inputs: Tensor, targets: Tensor, prepared: bool = False) -> PCState:
        """The free equilibrium: x_l = mu_l, the feedforward pass (condition C1 of Song et al. 2020),
        the minimum of E at lam = 0; ``nudged`` gives the state that relaxes under a nudge.
        ``prepared``: the targets are already in the loss's form (``Loss.prepare_targets``)."""
        activities = [inputs]
        linearizations = []
        for index in range(1, len(self.layers) + 1):
            linearizations.append(self.linearize(index, activities[-1]))
            if index < len(self.layers):
                activities.append(linearizations[-1].output)
        if not prepared:
            targets = self.loss.prepare_targets(targets, linearizations[-1].output)
        return PCState(activities, linearizations, targets, lam=0.0)

    def snapshot(self, state: PCState) -> PCState:
        return PCState(list(state.activities), list(state.linearizations), state.targets, state.lam,
                       dict(state.carried))

    def nudged(self, state: PCState, lam: float | Tensor, response: list[Tensor] | None = None) -> PCState:
        """A copy of ``state`` that relaxes under E = I + lam L (e.g. the free state, nudged);
        with the free state's ``first_order_response`` r, started at its first-order
        equilibrium eps_l = lam r_l (carried in difference form), which is where one step of
        error descent at step 1 from the free state lands. lam may be a 0-dim tensor (a graph
        that reads nothing back: ``algorithms.graph_estimate``)."""
        nudged = self.snapshot(state)
        nudged.lam = lam if isinstance(lam, Tensor) else float(lam)
        for index, direction in enumerate(response or (), start=1):
            self.set_error(nudged, index, direction * nudged.lam)
        return nudged

    def output_gradient(self, state: PCState) -> Tensor:
        """dl/dmu_L per sample at the state's output, computed once per output (in eager mode:
        a compiled step neither reads nor keeps it, as CUDA graphs reuse their outputs' memory)."""
        output = state.output
        if torch.compiler.is_compiling():
            return self.loss.per_sample_gradient(output, state.targets)
        known = state.output_gradient
        if known is not None and known[0] is output:
            return known[1]
        gradient = self.loss.per_sample_gradient(output, state.targets)
        state.output_gradient = (output, gradient)
        return gradient

    # --- the nudge's first order --------------------------------------------------------------
    def first_order_response(self, free: PCState) -> list[Tensor]:
        """r_l = d eps_l / d lam at lam = 0 from the free equilibrium (Millidge et al. 2022
        Eqs. 12-15): the equilibrium of E = I + lam L has pi_l eps_l = -lam (dx_L/dx_l)^T dL/dmu_L
        + O(lam^2), so r_l = -(1/pi_l) J_{l+1}^T ... J_L^T dL/dmu_L, backprop's adjoint of x_l
        scaled by -1/pi_l (one backward sweep)."""
        adjoint = self.output_gradient(free)
        response: list[Tensor] = []
        for index in range(len(self.layers) - 1, 0, -1):
            adjoint = free.linearizations[index].input_vjp(adjoint)
            response.append(adjoint * (-1.0 / self.precisions[index - 1]))
        return response[::-1]

    def displacement_per_unit(self, free: PCState, response: list[Tensor]) -> float:
        """max_{l,b} ||r_lb|| / max(||x_lb||, mean_b ||x_lb||): how far, relative to its hidden
        activity, one unit of lam moves the state of the sample and layer it moves most, at first
        order (0 without hidden layers). Per sample: each sample's equilibrium is its own
        problem, and the samples the loss pulls hardest carry the largest bias; a sample whose
        activity is (near) zero, a layer of dead ReLUs, is measured against the batch's mean size
        instead of its own, and a layer that is zero for the whole batch against the mean size
        of the other layers (against its own, the ratio is unbounded and lam underflows)."""
        return float(self.displacement_ratio(free, response)) if response else 0.0

    def displacement_ratio(self, free: PCState, response: list[Tensor]) -> Tensor:
        """``displacement_per_unit`` as a 0-dim tensor (at least one hidden layer); while
        compiling, without a host read (the dead-layer case then always takes the
        ``torch.where``, which leaves live layers as they are)."""
        norm = torch.linalg.vector_norm  # per sample (torch.norm's Python wrapper costs more than the norm)
        sizes = torch.stack([norm(x.flatten(1), dim=1) for x in free.activities[1:]])  # (layer, sample)
        means = sizes.mean(1)
        if torch.compiler.is_compiling() or not float(means.min()) > 0:  # a layer zero for the whole batch
            alive = means > 0
            living = (means * alive).sum() / alive.sum().clamp_min(1)  # the mean of the live layers' means
            means = torch.where(alive, means, torch.where(alive.any(), living, torch.ones_like(living)))
        scales = torch.maximum(sizes, means.unsqueeze(1))
        moves = torch.stack([norm(r.flatten(1), dim=1) for r in response])
        return (moves / scales).max()

    def response_parameter_gradients(self, free: PCState, response: list[Tensor]) -> list[list[Tensor]]:
        """The update of the limit lam -> 0 per layer, lim (1/lam) dE/dtheta(x_lam) =
        (d mu_l/d theta_l)^T d_l / B with d_l = -pi_l r_l inside and dL/dmu_L at the output, at
        the free equilibrium: backprop's gradient of the batch-mean loss (Millidge et al. 2022
        Eq. 16), from the response without autograd."""
        batch = free.activities[0].shape[0]
        signals = [r * (-self.precisions[index - 1] / batch) for index, r in enumerate(response, start=1)]
        signals.append(self.output_gradient(free) / batch)
        return [linearization.parameter_vjp(signal) for linearization, signal in zip(free.linearizations, signals)]

    def restore(self, state: PCState, snapshot: PCState) -> None:
        state.activities[:] = snapshot.activities
        state.linearizations[:] = snapshot.linearizations
        state.carried = dict(snapshot.carried)

    # --- the energy and its gradients ---------------------------------------------------------
    def error(self, state: PCState, index: int) -> Tensor:
        """eps_l = x_l - mu_l for a hidden layer l (read in difference form where carried)."""
        carried = state.carried_error(index)
        if carried is not None:
            return carried
        return state.activities[index] - state.linearizations[index - 1].output

    def signal(self, state: PCState, index: int, scale: float = 1.0) -> Tensor:
        """scale * d_l, d_l = dE/dmu_l for the per-sample energy (the scale folded into the one
        multiplication that forms d_l)."""
        if index == len(self.layers):
            return self.output_gradient(state) * (scale * state.lam)
        return self.error(state, index) * (-scale * self.precisions[index - 1])

    def weighted_error(self, state: PCState, index: int) -> Tensor:
        """pi_l eps_l = -d_l for a hidden layer l."""
        return self._weigh(self.error(state, index), index)

    def _weigh(self, error: Tensor, index: int) -> Tensor:
        precision = self.precisions[index - 1]
        return error if precision == 1.0 else precision * error

    def local_terms(self, state: PCState, errors: list[Tensor] | None = None) -> list[Tensor]:
        """pi_l eps_l, the local part of dE/dx_l and of dE/de_l (l = 1..L-1); ``errors`` are the
        eps_l when the caller has them."""
        if errors is None:
            return [self.weighted_error(state, index) for index in range(1, len(self.layers))]
        return [self._weigh(error, index) for index, error in enumerate(errors, start=1)]

    def errors(self, state: PCState) -> list[Tensor]:
        """eps_l = x_l - mu_l for l = 1..L-1 (plain coordinates)."""
        return [self.error(state, index) for index in range(1, len(self.layers))]

    def error_gradients(self, state: PCState, errors: list[Tensor] | None = None) -> list[Tensor]:
        """dE/de_l = pi_l e_l + lam (d x_L / d x_l)^T dL/dmu_L for l = 1..L-1, the errors taken as
        the free variables (x_l = mu_l + e_l; Goemaere et al. 2025): the loss gradient sent down
        through every layer's Jacobian at the current state, as in backprop. ``errors`` are the
        e_l when the caller has them."""
        local = self.local_terms(state, errors)
        adjoint, lam = _weighed_signal(self.output_gradient(state), state.lam)
        gradients: list[Tensor] = list(local)
        for index in range(len(self.layers) - 1, 0, -1):
            adjoint = state.linearizations[index].input_vjp(adjoint)
            gradients[index - 1] = torch.add(local[index - 1], adjoint, alpha=lam)
        return gradients

    def move_errors(self, state: PCState, directions: list[Tensor], step_size: float | Tensor,
                    errors: list[Tensor] | None = None) -> list[Tensor]:
        """e_l <- e_l - step_size / pi_l * direction_l, then x_l = mu_l + e_l from the bottom up
        (each mu_l re-predicted from the moved x_{l-1}), the e_l carried in difference form;
        returns the new errors. A tensor step size is read on the device (``core.moves``)."""
        errors = self.errors(state) if errors is None else errors
        moved = [descend(error, direction, divide(step_size, self.precisions[index - 1]))
                 for index, (error, direction) in enumerate(zip(errors, directions), start=1)]
        for index, error in enumerate(moved, start=1):
            self.set_error(state, index, error)
        return moved

    def set_error(self, state: PCState, index: int, error: Tensor) -> None:
        """x_l = mu_l + error, with ``error`` carried as eps_l (``PCState.carried``)."""
        prediction = state.linearizations[index - 1]
        self.set_activity(state, index, prediction.output + error)
        state.carried[index] = (state.activities[index], prediction, error)

    def activity_gradients(self, state: PCState, lowest: int = 1) -> list[Tensor]:
        """dE/dx_l = -d_l + J_{l+1}^T d_{l+1} for l = lowest..L-1, from the top down.

        Layers below ``lowest`` are left out: callers that know their errors and those of the
        layer above are exactly zero (the error wave has not reached them) save that work.
        """
        return self.top_down(state, lowest)[0]

    def top_down(self, state: PCState, lowest: int = 1) -> tuple[list[Tensor], Tensor, float]:
        """``activity_gradients(state, lowest)``, and the signal d_lowest = alpha * above that
        layer ``lowest`` sends down (at the output alpha * above = lam dl/dmu_L: ``_weighed_signal``;
        -1 inside: above = pi eps)."""
        top = len(self.layers)
        linearizations = state.linearizations
        above, alpha = _weighed_signal(self.output_gradient(state), state.lam)
        gradients: list[Tensor] = [above] * (top - 1)
        for index in range(top - 1, lowest - 1, -1):
            weighted = self.weighted_error(state, index)
            gradients[index - 1] = linearizations[index].add_input_vjp(weighted, above, alpha)
            above, alpha = weighted, -1.0
        return gradients[lowest - 1:], above, alpha

    def move_activities(self, state: PCState, directions: list[Tensor], step_size: float | Tensor,
                        lowest: int = 1) -> None:
        """x_l -= step_size / pi_l * direction_l for l = lowest..L-1."""
        for index, direction in enumerate(directions, start=lowest):
            scale = divide(step_size, self.precisions[index - 1])
            self.set_activity(state, index, descend(state.activities[index], direction, scale))

    def set_activity(self, state: PCState, index: int, value: Tensor) -> None:
        """x_l = value, then re-linearise the layer that reads x_l (shapes were checked by
        ``free_state``, so the hot path skips ``linearize``'s error naming)."""
        state.activities[index] = value
        state.linearizations[index] = self.linearizers[index](value)

    def components(self, state: PCState) -> tuple[Tensor, Tensor, Tensor]:
        """(I, L, I + lam L) as batch means."""
        batch = state.activities[0].shape[0]
        internal = state.output.new_zeros(())
        for index in range(1, len(self.layers)):
            squared = self.error(state, index).pow(2).sum()
            internal = internal + 0.5 * self.precisions[index - 1] * squared
        internal = internal / batch
        supervised = self.loss.value(state.output, state.targets)
        return internal, supervised, internal + state.lam * supervised

    def layer_parameter_gradients(self, state: PCState, index: int, scale: float = 1.0) -> list[Tensor]:
        """scale * dE/dtheta_l of the batch-mean energy, in ``layer_l.parameters()`` order.

        The scale (and the 1/B of the batch mean) is applied to the error signal before the
        outer product, never to the weight-sized result.
        """
        signal = self.signal(state, index, scale / state.activities[0].shape[0])
        return state.linearizations[index - 1].parameter_vjp(signal)

    def parameter_gradients(self, state: PCState, scale: float = 1.0) -> list[list[Tensor]]:
        """scale * dE/dtheta per layer at ``state``."""
        return [self.layer_parameter_gradients(state, index, scale)
                for index in range(1, len(self.layers) + 1)]


def _weighed_signal(gradient: Tensor, lam: float | Tensor) -> tuple[Tensor, float]:
    """(signal, alpha) with alpha * signal = lam * dl/dmu_L, for the sums that send it down
    (``torch.add``'s and ``addmm``'s alpha, which must be a number): a number lam is the alpha
    (one kernel per sum, with its rounding), a 0-dim tensor lam (a graph input:
    ``algorithms.graph_estimate``) is multiplied in once."""
    if isinstance(lam, Tensor):
        return gradient * lam, 1.0
    return gradient, lam
