"""``solver="newton"`` (``pl_energy.core.newton``): truncated Newton on the errors of a PC energy.

Oracles: the energy written here from its definition and differentiated by autograd (the
gradient vanishes at the returned state and the Hessian is positive definite there: a minimum),
and the ``error`` solver's equilibrium where that one converges.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pl_energy import build_algorithm, mlp
from pl_energy.core import Loss, PredictiveCodingEnergy, relax


def _strong_gain_problem(gain: float = 3.0):
    """A 6-hidden-layer tanh MLP with its weights scaled by ``gain``: at lam = 1 the error and
    anderson iterations do not reach 1e-10 in 200 steps there."""
    torch.manual_seed(0)
    network = mlp([20] + [32] * 6 + [5], activation="tanh").double()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(gain)
    return network, torch.randn(16, 20, dtype=torch.float64), torch.randint(0, 5, (16,))


def _energy_by_definition(network, inputs, targets, errors):
    """sum_b [sum_l 1/2 ||e_l||^2 + CE(x_L)], x_l = layer_l(x_{l-1}) + e_l, written here."""
    layers = list(network)
    x = inputs
    total = 0.0
    for layer, error in zip(layers[:-1], errors):
        x = layer(x) + error
        total = total + 0.5 * error.pow(2).sum()
    return total + torch.nn.functional.cross_entropy(layers[-1](x), targets, reduction="sum")


def _relaxed(network, inputs, targets, solver: str, steps: int = 200):
    energy = PredictiveCodingEnergy(network, Loss("cross_entropy"))
    with torch.no_grad():
        free = energy.free_state(inputs, targets)
        state = energy.nudged(free, 1.0, energy.first_order_response(free))
        report = relax(energy, state, steps, tol=1e-10, solver=solver).report
    return [e.clone() for e in energy.errors(state)], report


def test_newton_finds_the_minimum_where_the_fixed_point_iterations_stall():
    network, inputs, targets = _strong_gain_problem()
    for solver in ("error", "anderson"):
        assert not _relaxed(network, inputs, targets, solver)[1].converged
    errors, report = _relaxed(network, inputs, targets, "newton")
    assert report.converged and report.steps <= 40
    leaves = [e.requires_grad_(True) for e in errors]
    value = _energy_by_definition(network, inputs, targets, leaves)
    gradients = torch.autograd.grad(value, leaves, create_graph=True)
    size = torch.cat([e.flatten() for e in errors]).norm()
    assert torch.cat([g.flatten() for g in gradients]).norm() <= 1e-8 * size
    torch.manual_seed(1)
    for _ in range(5):  # positive curvature in random directions: a minimum, not a saddle
        direction = [torch.randn_like(e) for e in errors]
        curvature = torch.autograd.grad(gradients, leaves, direction, retain_graph=True)
        assert sum((d * c).sum() for d, c in zip(direction, curvature)) > 0


def test_newton_and_error_find_the_same_equilibrium_where_both_converge():
    network, inputs, targets = _strong_gain_problem(gain=1.0)
    by_error, report = _relaxed(network, inputs, targets, "error")
    by_newton, newton_report = _relaxed(network, inputs, targets, "newton")
    assert report.converged and newton_report.converged
    for a, b in zip(by_error, by_newton):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_pc_with_newton_converges_in_float32_near_a_confident_output():
    """float32: the line search allows for the rounding of a cross-entropy near 0 computed from
    large outputs (eps |x_L|, not eps E), else a nearly converged sample stalls."""
    network, inputs, targets = _strong_gain_problem()
    network = network.float()
    estimate = build_algorithm("pc", solver="newton").estimate(network, inputs.float(), targets)
    assert estimate.converged


def test_newton_needs_a_predictive_coding_energy():
    with pytest.raises(TypeError, match="solver 'error' moves prediction errors"):
        build_algorithm("ep", solver="newton").estimate(mlp([4, 3, 2], activation="clip"), torch.randn(2, 4),
                                                        torch.tensor([0, 1]))


@pytest.mark.parametrize("name,shape", [("mse", (4, 3)), ("cross_entropy", (4, 3)), ("cross_entropy", (4, 2, 3))])
def test_per_sample_losses_average_to_the_batch_loss(name, shape):
    loss = Loss(name)
    torch.manual_seed(0)
    output = torch.randn(*shape, dtype=torch.float64)
    targets = loss.prepare_targets(torch.softmax(torch.randn(*shape, dtype=torch.float64), -1), output)
    per_sample = loss.per_sample(output, targets)
    assert per_sample.shape == (shape[0],)
    # written here from the definitions: 1/2 ||o - t||^2, and torch's cross-entropy of the
    # classes on the last axis, each summed over a sample's other axes
    if name == "mse":
        expected = 0.5 * ((output - targets) ** 2).flatten(1).sum(1)
    else:
        expected = F.cross_entropy(output.movedim(-1, 1), targets.movedim(-1, 1), reduction="none")
        expected = expected.flatten(1).sum(1) if expected.dim() > 1 else expected
    torch.testing.assert_close(per_sample, expected)
    torch.testing.assert_close(per_sample.mean(), loss.value(output, targets))
