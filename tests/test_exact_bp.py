"""Checked against backprop exactly: Z-IL and Fa-Z-IL give BP's updates to rounding error.

Song et al. 2020 Thms. 3.1-3.2 (C1-C3) and A.5 (gamma != 1 scales layer k-below-output by gamma^k).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pl_energy import build_algorithm, mlp
from helpers import max_relative

TOLERANCE = 1e-10


def _problem(depth: int, activation: str, batch: int, seed: int = 0):
    torch.manual_seed(seed)
    sizes = [13] + [11, 9, 8, 7, 6][: depth - 1] + [5]
    network = mlp(sizes, activation=activation).double()
    inputs = torch.randn(batch, 13, dtype=torch.float64)
    targets = torch.randint(0, 5, (batch,))
    return network, inputs, targets


ALGORITHMS = [("z_il", {}), ("fa_z_il", {}), ("fa_z_il", {"full_dynamics": True})]


@pytest.mark.parametrize("algorithm,settings", ALGORITHMS)
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("depth", [2, 3, 4, 5, 6])
def test_equals_backprop_on_mlps(algorithm, settings, depth, activation, loss, batch):
    network, inputs, targets = _problem(depth, activation, batch)
    assert len(network) == depth
    reference = build_algorithm("bp").gradients(network, inputs, targets, loss)
    estimate = build_algorithm(algorithm, **settings).gradients(network, inputs, targets, loss)
    assert max_relative(estimate, reference) <= TOLERANCE
    assert set(estimate) == {name for name, _ in network.named_parameters()}
    assert any(name.endswith("bias") for name in estimate)


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(4, 6, 3), nn.ReLU(), nn.AvgPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(6 * 2 * 2, 12), nn.Sigmoid()),
        nn.Linear(12, 5),
    )


@pytest.mark.parametrize("algorithm,settings", ALGORITHMS)
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_equals_backprop_on_a_cnn(algorithm, settings, loss):
    torch.manual_seed(1)
    network = small_cnn().double()
    inputs = torch.randn(8, 1, 14, 14, dtype=torch.float64)
    targets = torch.randint(0, 5, (8,))
    reference = build_algorithm("bp").gradients(network, inputs, targets, loss)
    estimate = build_algorithm(algorithm, **settings).gradients(network, inputs, targets, loss)
    assert max_relative(estimate, reference) <= TOLERANCE


@pytest.mark.parametrize("algorithm,settings", ALGORITHMS)
def test_gamma_scales_layer_k_below_the_output_by_gamma_to_the_k(algorithm, settings):
    network, inputs, targets = _problem(4, "tanh", 16)
    gamma = 0.5
    reference = build_algorithm("bp").gradients(network, inputs, targets)
    estimate = build_algorithm(algorithm, inference_rate=gamma, **settings).gradients(network, inputs, targets)
    depth = len(network)
    for name, grad in estimate.items():
        below_output = depth - 1 - int(name.split(".")[0])
        expected = gamma ** below_output * reference[name]
        assert (grad - expected).abs().max() <= TOLERANCE * reference[name].abs().max()
    # and the scaling is real: the input layer's update is 1/8 of BP's
    assert not torch.allclose(estimate["0.0.weight"], reference["0.0.weight"])


def test_dense_targets_match_class_indices():
    network, inputs, targets = _problem(3, "relu", 6)
    one_hot = torch.nn.functional.one_hot(targets, 5).double()
    for loss in ("mse", "cross_entropy"):
        a = build_algorithm("z_il").gradients(network, inputs, targets, loss)
        b = build_algorithm("z_il").gradients(network, inputs, one_hot, loss)
        assert max_relative(a, b) <= TOLERANCE


def test_full_dynamics_keeps_the_upper_layers_moving_but_learning_stays_exact():
    """Fa-Z-IL's phi gates learning, not inference: more steps change the activities, not the update."""
    network, inputs, targets = _problem(4, "relu", 8)
    short = build_algorithm("fa_z_il", full_dynamics=True, trace=True)
    long = build_algorithm("fa_z_il", full_dynamics=True, steps=8, trace=True)
    first, second = short.estimate(network, inputs, targets), long.estimate(network, inputs, targets)
    a, b = first.gradients, second.gradients
    assert first.trace.steps == 3 and second.trace.steps == 8
    assert second.trace.internal[-1] != first.trace.internal[-1]
    assert max_relative(a, b) <= TOLERANCE


def test_z_il_records_its_energy_per_step_without_changing_the_update():
    """The trace of Z-IL's dynamics: one row per step of the error wave (depth rows), starting
    at the feedforward pass where E = lam * L of the network's own output (no prediction error)."""
    torch.manual_seed(0)
    network = mlp([12, 10, 8, 6, 4], activation="tanh").double()
    inputs, targets = torch.randn(5, 12, dtype=torch.float64), torch.randint(0, 4, (5,))
    algorithm = build_algorithm("z_il", trace=True)
    recorded = algorithm.estimate(network, inputs, targets, loss="mse")
    quiet = algorithm.estimate(network, inputs, targets, loss="mse", record=False)
    assert quiet.trace is None and recorded.trace.steps == 3 and len(recorded.trace.total) == 4
    for key, value in quiet.gradients.items():
        assert torch.equal(value, recorded.gradients[key])
    one_hot = torch.nn.functional.one_hot(targets, 4).double()
    with torch.no_grad():
        free_loss = 0.5 * (network(inputs) - one_hot).pow(2).sum(1).mean()
    assert float(recorded.trace.internal[0]) == 0.0
    assert float(recorded.trace.total[0]) == pytest.approx(float(free_loss), rel=1e-12)
    assert (recorded.trace.internal[1:] > 0).all()  # the wave leaves prediction errors behind
