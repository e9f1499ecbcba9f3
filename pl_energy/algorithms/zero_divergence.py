"""``z_il`` and ``fa_z_il``: exact backprop in a PC network (Song et al. 2020 Algs. 2 and 3).

Under C1 (inference starts at the feedforward pass), C2 (layer l is updated at the step its
error first appears) and C3 (inference rate ``inference_rate`` = 1), the PC update of layer l, counted k
layers below the output, taken at step t = k equals BP's (Song et al. 2020 Thms. 3.1 and 3.2). With
an inference rate r != 1 it is r^k times BP's (Song et al. 2020 A.5, their gamma; here
``inference_rate``, since ``gamma`` is the feedback strength of pc, ep and chl).

``z_il`` follows only the front of the error wave: at step t the only activity whose error is
new is x_{L-t}, and nothing else that Z-IL reads has changed (Song et al. 2020 Lemma A.3), so one VJP
and one weight gradient per layer suffice: the cost of BP.

``fa_z_il`` has no control signal; each layer's weights update at every step with rate
phi(eps) (Song et al. 2020 Alg. 3), where phi opens a neuron's plasticity at the step its error first
departs from zero and closes it afterwards. The output layer's error is present from step 0.

- ``full_dynamics=True`` runs every neuron's PC dynamics for all steps, as a circuit would.
  Below the front of the error wave (layers below L-1-t at step t) errors and activity
  gradients are exactly zero (Lemma A.3), so that work is skipped; above it the layers keep
  moving, which costs a forward and a feedback product per moving layer and step.
- ``full_dynamics=False`` (default; ``steps`` is then not used) computes only what phi lets through: each neuron learns
  once, at the step the wave reaches it, and the motion of layers behind the front never
  reaches a learning neuron. That is exactly z_il's arithmetic, at BP's cost. (The two differ
  only for a neuron whose error is exactly zero when the wave passes and departs from zero
  later; full dynamics then lets it learn from that later error.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.losses import Loss
from ..core.predictive_coding import PCState, PredictiveCodingEnergy
from ..core.trace import InferenceTrace
from .base import Algorithm, Estimate


@dataclass
class ZeroDivergenceIL(Algorithm):
    """Z-IL: each layer learns at the step the error wave reaches it (Song et al. 2020, Alg. 2).

    Args:
        inference_rate: the rate r of the activity updates, x <- x - r dE/dx (Song et al.
            2020's gamma; C3: r = 1 gives BP's updates exactly; otherwise layer k below the
            output gets r^k times).
        lam: weight of the supervised term, E = I + lam L (1: the target clamps the output).
        trace: record the energy of every inference step (a pass over the state per step).
    """

    inference_rate: float = 1.0
    lam: float = 1.0
    trace: bool = False
    name = "z_il"
    traced_phase = "the Z-IL dynamics"

    def __post_init__(self):
        super().__post_init__()
        if not self.inference_rate > 0 or self.lam == 0:
            raise ValueError(f"need inference_rate > 0 and lam != 0, got inference_rate={self.inference_rate}, "
                             f"lam={self.lam}")

    def free_phase(self, network: nn.Module, inputs: Tensor, targets: Tensor,
                   loss: Loss) -> tuple[PredictiveCodingEnergy, PCState]:
        """The PC energy (clamped output: lam = 1 by default) at the feedforward pass (C1)."""
        energy = PredictiveCodingEnergy(network, loss)
        return energy, energy.nudged(energy.free_state(inputs, targets), self.lam)

    def compute(self, network: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss,
                record: bool) -> Estimate:
        energy, state = self.free_phase(network, inputs, targets, loss)
        output = state.output
        depth = len(energy.layers)
        scale = 1 / (self.lam * inputs.shape[0])  # dE/dtheta of the batch mean, over lam
        per_layer: list[list[Tensor]] = [[] for _ in range(depth)]
        rows = [energy.components(state)] if record else []
        for index in range(depth, 0, -1):  # step t = depth - index: layer `index` learns
            layer = state.linearizations[index - 1]
            cotangent = energy.signal(state, index, scale)
            if index == 1:
                per_layer[0] = layer.parameter_vjp(cotangent)
                break
            feedback, per_layer[index - 1] = layer.vjp(cotangent)
            # the error reaches x_{index-1}: dE/dx = -d_{index-1} + J^T d_index, where d_{index-1}
            # is exactly 0 until this step (Lemma A.3), so dE/dx = feedback / scale
            moved = torch.add(state.activities[index - 1], feedback, alpha=-self.inference_rate / scale)
            if record:  # the layer above is re-linearised at the moved input only to read E
                energy.set_activity(state, index - 1, moved)
                rows.append(energy.components(state))
            else:
                state.activities[index - 1] = moved
        trace = InferenceTrace.from_rows(rows, converged=False) if record else None
        return Estimate.from_layers(network, per_layer, output, loss, state.targets, trace)


@dataclass
class FullyAutonomousZIL(ZeroDivergenceIL):
    """Fa-Z-IL: Z-IL without a control signal; plasticity opens with a neuron's first error
    (Song et al. 2020, Alg. 3).

    Args:
        steps: inference steps of the full dynamics (default: depth - 1, the fewest that reach
            every layer); unused when ``full_dynamics`` is False.
        full_dynamics: run every neuron's PC dynamics for all steps, as a circuit would
            (otherwise only what the plasticity gate lets through: z_il's arithmetic).

    ``inference_rate``, ``lam`` and ``trace`` are ``ZeroDivergenceIL``'s.
    """

    steps: int | None = None
    full_dynamics: bool = False
    name = "fa_z_il"
    traced_phase = "the Fa-Z-IL dynamics"

    def compute(self, network: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss,
                record: bool) -> Estimate:
        if not self.full_dynamics:
            return super().compute(network, inputs, targets, loss, record)
        energy, state = self.free_phase(network, inputs, targets, loss)
        output = state.output
        depth = len(energy.layers)
        steps = depth - 1 if self.steps is None else self.steps
        if steps < depth - 1:
            raise ValueError(f"fa_z_il needs steps >= {depth - 1} (depth - 1) to reach every layer")
        fired: list[Tensor | None] = [
            torch.zeros_like(state.linearizations[i].output, dtype=torch.bool) for i in range(depth)]
        totals: list[list[Tensor] | None] = [None] * depth
        rows = []
        for t in range(steps + 1):
            self._learn(energy, state, fired, totals, max(depth - t, 1), 1 / self.lam)
            if record:
                rows.append(energy.components(state))
            if t < steps:
                lowest = max(depth - 1 - t, 1)
                energy.move_activities(state, energy.activity_gradients(state, lowest), self.inference_rate, lowest)
        per_layer = [
            layer if layer is not None else [torch.zeros_like(p) for p in energy.layers[i].parameters()]
            for i, layer in enumerate(totals)
        ]
        trace = InferenceTrace.from_rows(rows, converged=False) if record else None
        return Estimate.from_layers(network, per_layer, output, loss, state.targets, trace)

    @staticmethod
    def _learn(energy: PredictiveCodingEnergy, state: PCState, fired: list[Tensor | None],
               totals: list[list[Tensor] | None], lowest: int, scale: float) -> None:
        """Accumulate scale * the update of layers >= lowest, gated by phi: errors departing
        from zero (scale and 1/B are applied to the gated signal, not the weight-sized result)."""
        scale = scale / state.activities[0].shape[0]
        for index in range(lowest, len(energy.layers) + 1):
            if fired[index - 1] is None:  # every neuron of the layer has learned: phi is closed
                continue
            signal = energy.signal(state, index)
            gate = (signal != 0) & ~fired[index - 1]
            if not gate.any():
                continue
            fired[index - 1] = None if bool((gate | fired[index - 1]).all()) else fired[index - 1] | gate
            grads = state.linearizations[index - 1].parameter_vjp(signal * gate * scale)
            previous = totals[index - 1]
            totals[index - 1] = grads if previous is None else [a + b for a, b in zip(previous, grads)]
