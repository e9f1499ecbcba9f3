"""The layered Hopfield energy of EP and CHL with activations that have flat regions.

Oracles: the first-order optimality (KKT) conditions of the free equilibrium, written here from
the energy's definition (Scellier & Bengio 2017) with the network's weights; and an EP written
here from the papers' equations with autograd and projected descent, not from the library.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pl_energy import build_algorithm, mlp
from pl_energy.algorithms.warnings import PrecisionWarning
from pl_energy.core import HopfieldEnergy, Loss, relax
from pl_energy.core.hopfield import Box
from helpers import layer_distances, max_relative

RHO = {"relu": torch.relu, "hardsigmoid": lambda x: F.relu6(x + 3) / 6, "sigmoid": torch.sigmoid}
BOX = {"relu": (0.0, None), "hardsigmoid": (-3.0, 3.0), "sigmoid": (None, None)}


def problem(activation: str, seed: int = 0, sizes=(12, 10, 8, 4), batch: int = 6):
    torch.manual_seed(seed)
    network = mlp(list(sizes), activation=activation).double()
    with torch.no_grad():  # strong weights push hardsigmoid units against their bounds (ReLU
        for p in network.parameters():  # units need no help; strong ReLU couplings have no minimum)
            p.mul_(3.0 if activation == "hardsigmoid" else 1.0)
    return network, torch.randn(batch, sizes[0], dtype=torch.float64), torch.randint(0, sizes[-1], (batch,))


def net_inputs(network, activation, inputs, hidden):
    """h_l = W_l rho(x_{l-1}) + b_l + W_{l+1}^T rho(x_{l+1}) for each hidden layer (gamma = 1)."""
    rho = RHO[activation]
    linears = [layer[0] if isinstance(layer, torch.nn.Sequential) else layer for layer in network]
    values = [inputs] + [rho(x) for x in hidden[:-1]] + [hidden[-1]]  # linear output layer
    drives = []
    for l in range(1, len(hidden)):
        h = linears[l - 1](values[l - 1]) + values[l + 1] @ linears[l].weight
        drives.append(h)
    return drives


@pytest.mark.parametrize("activation", ["relu", "hardsigmoid", "sigmoid"])
@pytest.mark.parametrize("solver,step_size", [("gd", 0.5), ("nesterov", 0.5), ("sweep", 1.0), ("adaptive_sweep", 1.3)])
def test_free_equilibrium_satisfies_the_kkt_conditions(activation, solver, step_size):
    network, inputs, targets = problem(activation)
    energy = HopfieldEnergy(network, Loss("mse"))
    state = energy.free_state(inputs, targets)
    report = relax(energy, state, 20000, step_size, tol=1e-12, solver=solver).report
    assert report.converged
    hidden = state.activities[1:]
    low, high = BOX[activation]
    for x, h in zip(hidden, net_inputs(network, activation, inputs, hidden)):
        if activation == "sigmoid":
            torch.testing.assert_close(x, torch.sigmoid(x) * (1 - torch.sigmoid(x)) * h, rtol=0, atol=1e-9)
            continue
        slope = 1.0 if activation == "relu" else 1 / 6
        inside = x > low if high is None else (x > low) & (x < high)
        assert inside.any()
        torch.testing.assert_close(x[inside], slope * h[inside], rtol=0, atol=1e-9)
        assert (slope * h[x <= low] <= low + 1e-9).all()  # pinned at the lower bound: pushed down
        if high is not None:
            assert (slope * h[x >= high] >= high - 1e-9).all()
        if activation == "relu":  # the bound is active somewhere, so the test means something
            assert (x <= low).any()
    output = hidden[-1]  # the linear output unit balances its bottom-up drive
    last = network[-1]
    torch.testing.assert_close(output, last(RHO[activation](hidden[-2])), rtol=0, atol=1e-9)


def test_relu_units_left_at_zero_by_the_feedforward_pass_switch_on():
    """The feedforward start leaves inactive units at exactly 0; the equilibrium needs some of
    them on (their drive from above is positive), and reaches a lower energy than the start."""
    network, inputs, targets = problem("relu", seed=3)
    energy = HopfieldEnergy(network, Loss("mse"))
    state = energy.free_state(inputs, targets)
    start = [x.clone() for x in state.activities[1:-1]]
    relax(energy, state, 20000, 1.0, tol=1e-12, solver="sweep")
    switched = sum(int(((a == 0) & (b > 0)).sum()) for a, b in zip(start, state.activities[1:-1]))
    assert switched > 0


def paper_ep(network, activation, inputs, targets, beta, steps=20000, eta=0.2):
    """EP from the equations (Scellier & Bengio 2017): projected descent on
    E = sum_l 1/2 ||x_l||^2 - rho(x_l).(W_l rho(x_{l-1}) + b_l) (+ beta * 1/2 ||x_L - y||^2)
    over states in the box where rho is linear (rho(x) = x on x >= 0 for ReLU, x/6 + 1/2 on
    [-3, 3] for hardsigmoid), the free phase from 0, the nudged phase from the free equilibrium,
    and the update (dE/dtheta(nudged) - dE/dtheta(free)) / beta of the batch mean, by autograd."""
    rho = {"relu": lambda x: x, "hardsigmoid": lambda x: x / 6 + 0.5}[activation]
    low, high = BOX[activation]
    linears = [layer[0] if isinstance(layer, torch.nn.Sequential) else layer for layer in network]
    y = F.one_hot(targets, linears[-1].out_features).double()

    def energy(xs, nudge):
        values = [inputs] + [rho(x) for x in xs[:-1]] + [xs[-1]]
        total = sum(0.5 * x.pow(2).sum() for x in xs)
        total = total - sum((values[l] * linears[l - 1](values[l - 1])).sum() for l in range(1, len(values)))
        return total + nudge * 0.5 * (xs[-1] - y).pow(2).sum()

    def relaxed(xs, nudge):
        for _ in range(steps):
            xs = [x.detach().requires_grad_(True) for x in xs]
            grads = torch.autograd.grad(energy(xs, nudge), xs)
            moved = [x - eta * g for x, g in zip(xs, grads)]
            moved = [m.clamp(low, high) for m in moved[:-1]] + [moved[-1]]
            if max(float((m - x).abs().max()) for m, x in zip(moved, xs)) < 1e-14:
                return [m.detach() for m in moved]
            xs = moved
        return [x.detach() for x in xs]

    start = [torch.zeros(inputs.shape[0], linear.out_features, dtype=torch.float64) for linear in linears]
    free = relaxed(start, 0.0)
    nudged = relaxed(free, beta)
    parameters = list(network.parameters())
    batch = inputs.shape[0]
    up = torch.autograd.grad(energy(nudged, 0.0) / batch, parameters)
    down = torch.autograd.grad(energy(free, 0.0) / batch, parameters)
    names = [name for name, _ in network.named_parameters()]
    return {name: (a - b) / beta for name, a, b in zip(names, up, down)}


@pytest.mark.parametrize("activation", ["relu", "hardsigmoid"])
def test_ep_matches_an_implementation_written_from_the_papers_equations(activation):
    network, inputs, targets = problem(activation, sizes=(6, 5, 4, 3), batch=4)
    expected = paper_ep(network, activation, inputs, targets, beta=0.05)
    algorithm = build_algorithm("ep", beta=0.05, centered=False, solver="sweep", step_size=1.0, steps=20000, tol=1e-13)
    estimate = algorithm.gradients(network, inputs, targets, loss="mse")
    assert max_relative(estimate, expected) <= 1e-8


def test_ep_reference_matches_a_dense_implicit_solve():
    """dL/dtheta at the free equilibrium, against the same formula solved with a dense Hessian
    (torch.linalg.solve) instead of conjugate gradients: accurate to 1e-10."""
    network, inputs, targets = problem("relu", sizes=(6, 5, 4, 3), batch=3)
    algorithm = build_algorithm("ep", solver="sweep", step_size=1.0, steps=20000, tol=1e-13)
    reference = algorithm.reference(network, inputs, targets, loss="mse")
    energy, state, _ = algorithm.free_phase(network, inputs, targets, Loss("mse"))
    free = [x.detach().requires_grad_(True) for x in state.activities[1:]]
    sizes = [x[0].numel() for x in free]
    parameters = list(network.parameters())
    total = {name: torch.zeros_like(p) for name, p in network.named_parameters()}
    for sample in range(inputs.shape[0]):
        def internal(*flat):
            xs = [f.reshape(1, -1) for f in flat]
            return energy.internal_energy([inputs[sample:sample + 1], *xs])
        point = tuple(x[sample].detach() for x in free)
        hessian = torch.autograd.functional.hessian(internal, point)
        dense = torch.cat([torch.cat([hessian[i][j].reshape(sizes[i], sizes[j]) for j in range(len(sizes))], 1)
                           for i in range(len(sizes))], 0)
        loss_gradient = torch.zeros(sum(sizes), dtype=torch.float64)
        output = state.activities[-1][sample]
        target = F.one_hot(targets[sample], 3).double()
        loss_gradient[-sizes[-1]:] = output - target
        v = torch.linalg.solve(dense, loss_gradient)
        xs = [p.detach().clone().requires_grad_(True) for p in point]
        grad_x = torch.autograd.grad(internal(*xs), xs, create_graph=True)
        mixed = torch.autograd.grad(torch.cat([g.reshape(-1) for g in grad_x]) @ v, parameters)
        for (name, _), g in zip(network.named_parameters(), mixed):
            total[name] -= g / inputs.shape[0]
    assert max_relative(reference, total) <= 1e-10


def test_an_energy_without_a_minimum_is_named():
    """ReLU units are unbounded: with strong couplings the energy falls without end."""
    network, inputs, targets = problem("relu")
    with torch.no_grad():
        for p in network.parameters():
            p.mul_(3.0)
    with pytest.raises(FloatingPointError, match="fell without bound.*no minimum"):
        build_algorithm("ep", steps=5000).gradients(network, inputs, targets)


def test_hardsigmoid_reference_and_frozen_parameters():
    network, inputs, targets = problem("hardsigmoid", sizes=(6, 5, 3), batch=4)
    network[0][0].bias.requires_grad_(False)
    for name in ("ep", "chl"):
        reference = build_algorithm(name, steps=2000, tol=1e-12).reference(network, inputs, targets)
        assert "0.0.bias" not in reference and all(torch.isfinite(g).all() for g in reference.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("box", [Box(0.0, 1.0, 1.0), Box(0.0, None, 1.0), Box(-3.0, 3.0, 1 / 6)])
def test_the_projected_gradient_is_its_definition(box, dtype):
    """0 where x is on (or past) a bound and the gradient points outwards, else the gradient."""
    torch.manual_seed(0)
    x = box.project(torch.randn(40, 30, dtype=dtype) * 4)
    x[0, :4] = torch.tensor([-5.0, 5.0, box.low, box.high if box.high is not None else 2.0])
    gradient = torch.randn(40, 30, dtype=dtype)
    gradient[1, :3] = torch.tensor([0.0, -0.0, 1e30])
    expected = torch.where(x <= box.low, gradient.clamp(max=0), gradient)
    if box.high is not None:
        expected = torch.where(x >= box.high, expected.clamp(min=0), expected)
    assert torch.equal(box.project_gradient(x, gradient), expected)


def test_the_clamped_phase_sees_the_output_through_its_unit():
    """CHL clamps the output to x_L - dL/dx_L, which need not lie in the unit's box: the layer
    below must see rho(x_L), as the energy written here (autograd, float64) says, inside the
    boxes of the free layers."""
    from pl_energy.core.activations import Clip

    torch.manual_seed(0)
    network = nn.Sequential(nn.Sequential(nn.Linear(6, 5), Clip()), nn.Sequential(nn.Linear(5, 4), Clip()),
                            nn.Sequential(nn.Linear(4, 3), Clip())).double()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(2)
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    energy = HopfieldEnergy(network, Loss("cross_entropy"))
    clamped = energy.clamped(energy.free_state(x, y))
    output = clamped.activities[-1]
    assert bool(((output < 0) | (output > 1)).any())  # the case: a target outside the box
    hidden = [a.detach().clone().requires_grad_(True) for a in clamped.activities[1:-1]]
    states, rho = [x, *hidden, output], lambda v: v.clamp(0, 1)
    total = sum(0.5 * states[l].pow(2).sum()
                - (rho(states[l]) * network[l - 1][0](rho(states[l - 1]) if l > 1 else x)).sum()
                for l in range(1, 4))
    for gradient, written, state in zip(energy.activity_gradients(clamped), torch.autograd.grad(total, hidden),
                                        hidden):
        inside = (state > 0) & (state < 1)
        torch.testing.assert_close(gradient[inside], written[inside], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_the_contrast_of_two_phases_is_the_difference_of_the_energys_weight_gradients(gamma):
    """``parameter_gradient_difference`` (one VJP of the stacked phases, or of their difference
    where both share the clamped input) against autograd of E(state) - E(minus) over the
    parameters, the batch-mean energy written here from its definition (float64)."""
    network, inputs, _ = problem("hardsigmoid")
    energy = HopfieldEnergy(network, Loss("mse"), gamma=gamma)
    state = energy.free_state(inputs, None)
    torch.manual_seed(3)
    minus = energy.snapshot(state)
    minus.activities[1:] = [x + 0.1 * torch.rand_like(x) for x in state.activities[1:]]
    rho = RHO["hardsigmoid"]
    linears = [layer[0] if isinstance(layer, nn.Sequential) else layer for layer in network]

    def batch_mean_energy(activities):
        values = [inputs] + [rho(x) for x in activities[1:-1]] + [activities[-1]]
        return sum(gamma ** (l - 1) * (0.5 * activities[l].pow(2).sum() - (values[l] * linears[l - 1](values[l - 1])).sum())
                   for l in range(1, len(activities))) / inputs.shape[0]

    parameters = list(network.parameters())
    written = torch.autograd.grad(2.0 * (batch_mean_energy(state.activities) - batch_mean_energy(minus.activities)),
                                  parameters)
    found = [g for layer in energy.parameter_gradient_difference(state, minus, scale=2.0) for g in layer]
    for got, expected in zip(found, written):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_a_dense_couplings_kept_net_input_follows_its_input_and_weights():
    """``DenseCoupling`` keeps g(u) for the latest u: a change of u in place or an optimiser's
    in-place step on the weights is seen (version counters), against F.linear written here."""
    from pl_energy.core.couplings import DenseCoupling

    torch.manual_seed(0)
    linear = nn.Linear(5, 3).double()
    coupling = DenseCoupling(linear)
    u = torch.rand(4, 5, dtype=torch.float64)
    first = coupling.forward(u)
    assert coupling.forward(u) is first  # the same point: kept
    u.mul_(2)
    torch.testing.assert_close(coupling.forward(u), F.linear(u, linear.weight, linear.bias).detach())
    with torch.no_grad():
        linear.weight.add_(1.0)
    torch.testing.assert_close(coupling.forward(u), F.linear(u, linear.weight, linear.bias).detach())


def test_chl_relaxes_both_phases_to_what_its_estimate_reads_divided_by_gamma():
    """CHL's update is the contrast divided by gamma^(L-1) = 1e-3 on a 4-layer net: both phases
    relax to tol * gamma^(L-1), so the default estimate is within 1 % of the tightly converged
    one (6.5e-3 in the first layer, 5e-5 in the second) and of chl's own limit (7e-3, where the
    tight one is 2.3e-3 off it: the O(gamma) bias), not 84 % off in the first layer, as it was at
    tol alone with no warning (found by an independent probe)."""
    torch.manual_seed(0)
    x, y = torch.rand(16, 20, dtype=torch.float64), torch.randint(0, 10, (16,))
    network = mlp([20, 16, 16, 16, 10], activation="sigmoid").double()
    default = build_algorithm("chl")
    estimate = default.estimate(network, x, y)
    tight = build_algorithm("chl", tol=1e-13, steps=5000).gradients(network, x, y)
    reference = default.reference(network, x, y)
    for name in reference:
        assert (estimate.gradients[name] - tight[name]).norm() <= 1e-2 * tight[name].norm(), name
        assert (estimate.gradients[name] - reference[name]).norm() <= 1e-2 * reference[name].norm(), name
    assert [r.tol for r in estimate.inference] == [1e-6, pytest.approx(1e-9), pytest.approx(1e-9)]
    single = build_algorithm("chl").estimate(network.float(), x.float(), y)
    assert [r.tol for r in single.inference] == [1e-6, 1e-6]  # float32's floor is above 1e-9: never looser than tol


def test_chl_warns_and_refuses_where_its_read_is_below_the_rounding_of_relaxed_states():
    """CHL reads its clamped phase divided by gamma^(L-1): in float32, 100 machine epsilons of
    the relaxed states are 1 % of that at L = 4 (a sigmoid MLP's first layer was 2.4 off the
    float64 estimate, without a word) and 12 % at L = 5 (584 off): a PrecisionWarning, then a
    refusal unless allow_imprecise. Three layers (1e-3 % rounding) and float64 stay quiet."""
    torch.manual_seed(0)
    x, y = torch.rand(16, 20), torch.randint(0, 10, (16,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_algorithm("chl").gradients(mlp([20, 16, 16, 10], activation="sigmoid"), x, y)
        build_algorithm("chl").gradients(mlp([20, 16, 16, 16, 16, 10], activation="sigmoid").double(), x.double(), y)
    with pytest.warns(PrecisionWarning, match=r"chl's clamped phase \(gamma=0.1 over 4 layers\) .* about 1%"):
        build_algorithm("chl").gradients(mlp([20, 16, 16, 16, 10], activation="sigmoid"), x, y)
    five = mlp([20, 16, 16, 16, 16, 10], activation="sigmoid")
    with pytest.raises(ValueError, match=r"about 12%.*use a larger gamma.*allow_imprecise=True"):
        build_algorithm("chl").gradients(five, x, y)
    with pytest.warns(PrecisionWarning):
        build_algorithm("chl", allow_imprecise=True).gradients(five, x, y)


def test_chls_embedded_estimate_is_its_distance_from_corrected_chl_and_within_its_error_by_a_small_factor():
    """Oracles: a separate corrected-chl run (its own phases: the first-order term H delta_x)
    and chl's implicit-differentiation reference. With error_estimate=True, chl's error_bound is
    its update's distance from the first-order term, relative to it; chl's distance from its
    reference is 1 to 2.5 times it (measured 1.0-2.15 over 27 cases: the first-order term
    keeps chl's O(gamma) bias). Off by default; corrected chl has none."""
    for activation in ("clip", "sigmoid", "tanh"):
        torch.manual_seed(0)
        network = mlp([20, 16, 16, 5], activation=activation).double()
        inputs, targets = torch.rand(32, 20, dtype=torch.float64), torch.randint(0, 5, (32,))
        for gamma in (0.5, 0.1):
            settings = dict(gamma=gamma, tol=1e-11, steps=5000)
            estimate = build_algorithm("chl", error_estimate=True, **settings).estimate(network, inputs, targets)
            corrected = build_algorithm("chl", corrected=True, **settings).gradients(network, inputs, targets)
            assert estimate.error_bound == pytest.approx(layer_distances(estimate.gradients, corrected, network),
                                                         rel=1e-6)
            error = max(layer_distances(estimate.gradients, build_algorithm("chl", **settings).reference(
                network, inputs, targets), network).values())
            worst = max(estimate.error_bound.values())
            assert worst <= error <= 2.5 * worst, (activation, gamma, error, estimate.error_bound)
    assert build_algorithm("chl").estimate(network, inputs, targets).error_bound is None
    assert build_algorithm("chl", corrected=True, error_estimate=True).estimate(network, inputs, targets).error_bound is None


def test_chls_embedded_estimate_from_the_energy_written_here():
    """Oracle independent of the library's energy and of its forward-mode JVP: the dense layered
    Hopfield energy's weight gradients written here from the paper (batch mean of
    dE/dW_l = -c_l rho(x_l) rho(x_{l-1})^T, dE/db_l = -c_l rho(x_l), c_l = gamma^(l-1)), at the
    free and clamped states chl relaxed. chl's update is gamma^-(L-1) times their difference,
    its first-order term the JVP of the written gradients along x_clamped - x_free, and
    error_bound the update's distance from that term, relative to it."""
    from torch.func import jvp

    for activation in ("clip", "tanh"):
        torch.manual_seed(0)
        network = mlp([12, 10, 8, 4], activation=activation).double()
        inputs, targets = torch.rand(16, 12, dtype=torch.float64), torch.randint(0, 4, (16,))
        algorithm = build_algorithm("chl", gamma=0.5, tol=1e-11, steps=5000, error_estimate=True)
        estimate = algorithm.estimate(network, inputs, targets)
        run = algorithm.phases(network, inputs, targets, Loss("cross_entropy"), record=False)
        free, clamped = run.low.state.activities, run.high.state.activities
        linears = [layer[0] if isinstance(layer, nn.Sequential) else layer for layer in network]
        units = [layer[1] if isinstance(layer, nn.Sequential) else nn.Identity() for layer in network]

        def weight_gradients(*activities):
            values = [inputs] + [unit(x) for unit, x in zip(units, activities)]
            grads = []
            for index, _ in enumerate(linears, start=1):
                weight = -(0.5 ** (index - 1)) / inputs.shape[0]
                grads += [weight * values[index].t() @ values[index - 1], weight * values[index].sum(0)]
            return tuple(grads)

        scale = 0.5 ** -(len(linears) - 1)
        high, low = weight_gradients(*clamped[1:]), weight_gradients(*free[1:])
        _, first = jvp(weight_gradients, tuple(free[1:]), tuple(c - f for c, f in zip(clamped[1:], free[1:])))
        names = [name for name, _ in network.named_parameters()]
        update = {name: scale * (h - l) for name, h, l in zip(names, high, low)}
        first_order = {name: scale * g for name, g in zip(names, first)}
        for name in names:
            torch.testing.assert_close(estimate.gradients[name], update[name], rtol=1e-9, atol=1e-12)
        assert estimate.error_bound == pytest.approx(layer_distances(update, first_order, network), rel=1e-6)
