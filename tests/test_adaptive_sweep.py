"""``solver="adaptive_sweep"`` (``pl_energy.core.adaptive_sweep``): even/odd sweeps whose
over-relaxation factor follows their observed contraction.

Oracles: Young's optimal SOR factor checked against the spectral radii of SOR iteration matrices
built here with dense linear algebra; the free equilibrium checked against the first-order
optimality (KKT) conditions of the box-constrained Hopfield energy, written here from its
definition (Scellier & Bengio 2017) with autograd, and against plain sweeps' equilibrium; the
projected gradient checked against its definition written with comparisons.
"""

from __future__ import annotations

import pytest
import torch

from pl_energy import build_algorithm, mlp
from pl_energy.core import HopfieldEnergy, Loss, relax
from pl_energy.core.activations import Clip
from pl_energy.core.adaptive_sweep import optimal_factor
from pl_energy.core.hopfield import Box
from helpers import max_relative


def _sor_radius(matrix: torch.Tensor, split: int, factor: float) -> float:
    """Spectral radius of block SOR on ``matrix`` (unit block diagonal, two blocks at ``split``)."""
    lower = -torch.tril(matrix, -1)
    lower[split:, split:] = 0  # within a block the diagonal is the identity: no strict part
    upper = -torch.triu(matrix, 1)
    eye = torch.eye(len(matrix), dtype=matrix.dtype)
    iteration = torch.linalg.solve(eye - factor * lower, (1 - factor) * eye + factor * upper)
    return float(torch.linalg.eigvals(iteration).abs().max())


def test_the_factor_from_an_observed_rate_is_the_optimal_sor_factor():
    """For A = [[I, -C], [-C^T, I]] (two blocks, as the odd and even layers) the rate of SOR at a
    factor below the optimum gives back omega_opt = 2 / (1 + sqrt(1 - mu^2)), mu = ||C||_2, and no
    factor on a grid around it contracts faster."""
    torch.manual_seed(0)
    coupling = torch.randn(7, 5, dtype=torch.float64)
    coupling *= 0.95 / torch.linalg.matrix_norm(coupling, 2)
    matrix = torch.eye(12, dtype=torch.float64)
    matrix[:7, 7:], matrix[7:, :7] = -coupling, -coupling.T
    best = 2 / (1 + (1 - 0.95 ** 2) ** 0.5)
    for factor in (1.0, 1.2, 1.5):
        assert optimal_factor(_sor_radius(matrix, 7, factor), factor) == pytest.approx(best, rel=1e-6)
    grid = [1.0 + 0.01 * k for k in range(95)]
    assert min(grid, key=lambda f: _sor_radius(matrix, 7, f)) == pytest.approx(best, abs=0.01)


def _clip_problem():
    torch.manual_seed(2)
    network = mlp([20, 16, 12, 8, 4], activation="clip").double()
    return network, torch.randn(8, 20, dtype=torch.float64)


def _energy_gradients(network, inputs, hidden):
    """dE/dx_l of E = sum_l 1/2 ||x_l||^2 - x_l . (W_l x_{l-1} + b_l), written from the definition
    (clip(x) = x on the box the states live in; the output is linear)."""
    states = [x.detach().clone().requires_grad_(True) for x in hidden]
    linears = [layer[0] if isinstance(layer, torch.nn.Sequential) else layer for layer in network]
    energy = 0.0
    for below, x, linear in zip([inputs] + states[:-1], states, linears):
        energy = energy + 0.5 * x.pow(2).sum() - (x * linear(below)).sum()
    return torch.autograd.grad(energy, states)


def test_the_adaptive_equilibrium_is_the_sweeps_and_satisfies_the_kkt_conditions():
    network, inputs = _clip_problem()
    found = {}
    for solver in ("sweep", "adaptive_sweep"):
        energy = HopfieldEnergy(network, Loss("mse"))
        state = energy.free_state(inputs, None)
        report = relax(energy, state, 20000, 1.3, tol=1e-12, solver=solver).report
        assert report.converged
        found[solver] = (state.activities[1:], report.steps, energy.over_relaxation)
    hidden, steps, factor = found["adaptive_sweep"]
    assert factor > 1.3 and steps < found["sweep"][1]  # the factor rose, and it paid
    for x, y in zip(hidden, found["sweep"][0]):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-9)
    atol = 1e-9
    for x, g in zip(hidden[:-1], _energy_gradients(network, inputs, hidden)[:-1]):
        inside, low, high = (x > 0) & (x < 1), x <= 0, x >= 1
        assert inside.any() and low.any()  # the bound is active somewhere, so the test means something
        assert g[inside].abs().max() <= atol
        assert (g[low] >= -atol).all() and (g[high] <= atol).all()  # pushed against the bound
    assert _energy_gradients(network, inputs, hidden)[-1].abs().max() <= atol  # the free output


def test_ep_estimate_is_the_sweeps_to_the_tolerance():
    """Centered EP at its defaults (tol 1e-6) with adaptive and with plain sweeps: the gradient
    read at the nudged equilibria agrees within 10 x tol."""
    network, inputs = _clip_problem()
    targets = torch.randint(0, 4, (8,))
    estimates = [build_algorithm("ep", solver=solver).estimate(network, inputs, targets)
                 for solver in ("sweep", "adaptive_sweep")]
    assert all(e.converged for e in estimates)
    assert max_relative(estimates[1].gradients, estimates[0].gradients) <= 1e-5


def _tanh_mlp():
    torch.manual_seed(1)
    return mlp([10, 8, 6, 3], activation="tanh").double(), torch.randn(5, 10, dtype=torch.float64)


def _max_pool_cnn():
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.MaxPool2d(2), Clip()),
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5))).double()
    with torch.no_grad():
        for p in network.parameters():
            p.mul_(2.0)
    return network, torch.rand(4, 1, 8, 8, dtype=torch.float64)


@pytest.mark.parametrize("build", [_tanh_mlp, _max_pool_cnn])
def test_blocks_that_are_not_exact_quadratics_keep_the_factor_they_are_given(build):
    """tanh units (a sweep is a descent step) and max-pooling (a layer's top-down input depends on
    its own state through the pool's switches): the factor stays, and the relaxation is the plain
    sweep's, step for step (at 0.7 the tanh net's energy would rise if the factor were raised)."""
    network, inputs = build()
    states, reports = [], []
    for solver in ("sweep", "adaptive_sweep"):
        energy = HopfieldEnergy(network, Loss("mse"))
        state = energy.free_state(inputs, None)
        reports.append(relax(energy, state, 300, 0.7, tol=1e-10, solver=solver).report)
        states.append(state.activities)
        assert energy.over_relaxation is None and reports[-1].converged
    assert reports[0].steps == reports[1].steps
    for x, y in zip(*states):
        assert torch.equal(x, y)
