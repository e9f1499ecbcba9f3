"""Convolutional Hopfield energies (Ernoult et al. 2019; Laborieux et al. 2021).

Oracles, each written here from the papers' definition of the energy, with F.conv2d and the
pools called directly (not the library's couplings):

    E = sum_l 1/2 ||x_l||^2 - Phi(x) + beta L,   Phi = sum_l rho(x_l) . P(W_l * rho(x_{l-1}) + b_l)

- autograd of that E for the activity and weight gradients;
- the KKT conditions of its box-constrained minimum at the free equilibrium;
- EP computed from it by projected descent (Laborieux et al.'s relaxation) and autograd;
- finite differences of the loss through re-relaxed equilibria for the implicit reference;
- the theory's limits: one-sided EP O(beta), centered EP O(beta^2), CHL O(gamma).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pl_energy import build_algorithm
from pl_energy.core import HopfieldEnergy, Loss, relax
from pl_energy.core.activations import Clip
from helpers import cosine, log_slope, max_relative, relative_l2

POOLS = {"max": (nn.MaxPool2d, F.max_pool2d), "avg": (nn.AvgPool2d, F.avg_pool2d)}
# clip's states stay in [0, 1], where rho is the identity (the linear piece, as in Scellier &
# Bengio 2017: its slope at the bounds is 1, so a unit on a bound can leave it)
UNITS = {"clip": (Clip, lambda x: x), "sigmoid": (nn.Sigmoid, torch.sigmoid)}


def cnn(pool: str = "max", unit: str = "clip", seed: int = 0, gain: float = 2.0) -> nn.Sequential:
    """1x8x8 -> conv 3x3 (3 channels), pool 2 -> conv 3x3 (4), pool 2 -> flatten, linear 16 -> 5."""
    torch.manual_seed(seed)
    module, _ = POOLS[pool]
    activation = UNITS[unit][0]
    network = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), module(2), activation()),
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), module(2), activation()),
        nn.Sequential(nn.Flatten(), nn.Linear(16, 5)),
    ).double()
    with torch.no_grad():  # strong enough that clip units reach both bounds
        for p in network.parameters():
            p.mul_(gain)
    return network


def batch(size: int = 4, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(size, 1, 8, 8, generator=generator, dtype=torch.float64),
            torch.randint(0, 5, (size,), generator=generator))


def phi_of_rates(network, pool: str, inputs, r1, r2, output):
    """Phi of the module docstring as a function of the rates rho(x_1), rho(x_2) and x_3."""
    _, pooling = POOLS[pool]
    conv1, conv2, linear = network[0][0], network[1][0], network[2][1]
    phi = (r1 * pooling(F.conv2d(inputs, conv1.weight, conv1.bias, padding=1), 2)).sum()
    phi = phi + (r2 * pooling(F.conv2d(r1, conv2.weight, conv2.bias, padding=1), 2)).sum()
    return phi + (output * F.linear(r2.flatten(1), linear.weight, linear.bias)).sum()


def written_phi(network, pool: str, unit: str, inputs, hidden):
    """Phi from the network's weights; ``hidden`` = [x_1, x_2, x_3]."""
    rho = UNITS[unit][1]
    return phi_of_rates(network, pool, inputs, rho(hidden[0]), rho(hidden[1]), hidden[2])


def written_energy(network, pool, unit, inputs, hidden, beta=0.0, targets=None):
    energy = sum(0.5 * x.pow(2).sum() for x in hidden) - written_phi(network, pool, unit, inputs, hidden)
    if beta:
        energy = energy + beta * F.cross_entropy(hidden[-1], targets, reduction="sum")
    return energy


@pytest.mark.parametrize("pool,unit", [("max", "clip"), ("avg", "sigmoid")])
def test_gradients_match_autograd_of_the_written_energy(pool, unit):
    network = cnn(pool, unit)
    inputs, targets = batch()
    energy = HopfieldEnergy(network, Loss("cross_entropy"))
    state = energy.nudged(energy.free_state(inputs, targets), beta=0.3)
    generator = torch.Generator().manual_seed(2)
    moved = [(x + 0.2 * torch.randn(x.shape, generator=generator, dtype=x.dtype)) for x in state.activities[1:]]
    if unit == "clip":  # states live in the box [0, 1] (rho is linear there)
        moved[:2] = [m.clamp(0.02, 0.98) for m in moved[:2]]
    state.activities[1:] = moved
    hidden = [m.clone().requires_grad_() for m in moved]
    written = written_energy(network, pool, unit, inputs, hidden, 0.3, targets)
    expected = torch.autograd.grad(written, hidden, retain_graph=True)
    for got, want in zip(energy.activity_gradients(state), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    weights = torch.autograd.grad(written / len(inputs), list(network.parameters()))
    got = [g for layer in energy.parameter_gradients(state) for g in layer]
    for a, b in zip(got, weights):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    _, _, total = energy.components(state)
    assert float(total) * len(inputs) == pytest.approx(float(written.detach()), rel=1e-12)


@pytest.mark.parametrize("solver,step_size", [("sweep", 1.0), ("sweep", 1.3), ("nesterov", 0.5)])
def test_free_equilibrium_of_a_max_pool_cnn_satisfies_the_kkt_conditions(solver, step_size):
    network = cnn()
    inputs, targets = batch()
    energy = HopfieldEnergy(network, Loss("cross_entropy"))
    state = energy.free_state(inputs, targets)
    assert relax(energy, state, 20000, step_size, tol=1e-12, solver=solver).report.converged
    # the net input of a unit is dPhi/d rho(x_l): the written Phi, differentiated in the rates
    rates = [x.clone().requires_grad_() for x in state.activities[1:3]]
    drives = torch.autograd.grad(phi_of_rates(network, "max", inputs, *rates, state.activities[3]), rates)
    on_bound_below = on_bound_above = 0
    for x, h in zip(state.activities[1:3], drives):
        inside = (x > 0) & (x < 1)
        torch.testing.assert_close(x[inside], h[inside], rtol=0, atol=1e-9)
        assert (h[x <= 0] <= 1e-9).all() and (h[x >= 1] >= 1 - 1e-9).all()
        on_bound_below += int((x <= 0).sum())
        on_bound_above += int((x >= 1).sum())
    assert on_bound_below > 0 and on_bound_above > 0  # both constraints are active somewhere
    output = state.activities[3]
    torch.testing.assert_close(output, network[2](state.activities[2]), rtol=0, atol=1e-9)



def paper_conv_ep(network, inputs, targets, beta, eta=0.2, steps=20000):
    """EP from the equations (Laborieux et al. 2021, one-sided): projected descent on the written
    E from the feedforward pass x_l = rho(P(W_l * x_{l-1} + b_l)) (free phase; Laborieux et al.
    start at 0, which can settle in another of this non-convex energy's minima), then on
    E + beta L from the free equilibrium; the update (dE/dtheta(nudged) - dE/dtheta(free)) / beta
    of the batch mean, by autograd."""

    def relaxed(hidden, nudge):
        for _ in range(steps):
            hidden = [x.detach().requires_grad_(True) for x in hidden]
            grads = torch.autograd.grad(written_energy(network, "max", "clip", inputs, hidden, nudge, targets), hidden)
            moved = [(x - eta * g).detach() for x, g in zip(hidden, grads)]
            moved = [m.clamp(0, 1) for m in moved[:2]] + [moved[2]]
            if max(float((m - x.detach()).abs().max()) for m, x in zip(moved, hidden)) < 1e-14:
                return [m.detach() for m in moved]
            hidden = moved
        raise AssertionError("the written relaxation did not converge")

    conv1, conv2, linear = network[0][0], network[1][0], network[2][1]
    with torch.no_grad():
        x1 = F.max_pool2d(F.conv2d(inputs, conv1.weight, conv1.bias, padding=1), 2).clamp(0, 1)
        x2 = F.max_pool2d(F.conv2d(x1, conv2.weight, conv2.bias, padding=1), 2).clamp(0, 1)
        start = [x1, x2, F.linear(x2.flatten(1), linear.weight, linear.bias)]
    free = relaxed(start, 0.0)
    nudged = relaxed(free, beta)
    parameters = list(network.parameters())
    up = torch.autograd.grad(written_energy(network, "max", "clip", inputs, nudged) / len(inputs), parameters)
    down = torch.autograd.grad(written_energy(network, "max", "clip", inputs, free) / len(inputs), parameters)
    return {name: (a - b) / beta for (name, _), a, b in zip(network.named_parameters(), up, down)}


def test_conv_ep_matches_an_implementation_written_from_the_papers_equations():
    """Same dynamics (projected descent at step 0.2 from the feedforward pass), same update.

    With max-pooling the energy is not convex and has several minima: other solvers (sweeps,
    nesterov) reach a minimum too (the KKT test above), but not always this one."""
    network = cnn()
    inputs, targets = batch()
    expected = paper_conv_ep(network, inputs, targets, beta=0.1)
    algorithm = build_algorithm("ep", beta=0.1, centered=False, solver="gd", step_size=0.2, steps=20000, tol=1e-13)
    assert max_relative(algorithm.gradients(network, inputs, targets), expected) <= 1e-8


def test_conv_reference_matches_finite_differences_through_re_relaxed_equilibria():
    """dL/dtheta at the free equilibrium of a smooth CNN (sigmoid units, average pooling)."""
    network = cnn("avg", "sigmoid", gain=1.0)
    inputs, targets = batch(2)
    algorithm = build_algorithm("ep", solver="sweep", step_size=1.0, steps=20000, tol=1e-14)
    reference = algorithm.reference(network, inputs, targets)
    loss = Loss("cross_entropy")

    def loss_at_equilibrium() -> float:
        return float(loss.value(algorithm.predict(network, inputs), targets))

    h = 1e-5
    with torch.no_grad():
        for name, index in [("0.0.weight", (1, 0, 2, 1)), ("1.0.weight", (3, 2, 0, 0)), ("1.0.bias", (2,)),
                            ("2.1.weight", (4, 7))]:
            parameter = dict(network.named_parameters())[name]
            parameter[index] += h
            up = loss_at_equilibrium()
            parameter[index] -= 2 * h
            down = loss_at_equilibrium()
            parameter[index] += h
            assert (up - down) / (2 * h) == pytest.approx(reference[name][index].item(), rel=1e-6, abs=1e-12)




def _ep_errors(network, inputs, targets, betas, **settings):
    reference = build_algorithm("ep", **settings).reference(network, inputs, targets)
    one_sided, centered = [], []
    for beta in betas:
        one_sided.append(relative_l2(build_algorithm("ep", beta=beta, centered=False, **settings).gradients(network, inputs, targets),
                                     reference))
        estimate = build_algorithm("ep", beta=beta, centered=True, **settings).gradients(network, inputs, targets)
        centered.append(relative_l2(estimate, reference))
    return one_sided, centered, cosine(estimate, reference)


@pytest.mark.parametrize("pool,unit,betas,solver,limit", [
    ("avg", "sigmoid", [0.08, 0.04, 0.02, 0.01], ("sweep", 1.0), (1e-2, 0.999)),
    ("max", "clip", [1e-3, 3e-4, 1e-4], ("nesterov", 0.5), (1e-6, 0.999999)),
], ids=["smooth", "max-pool"])
def test_conv_ep_approaches_its_reference_at_the_theorys_rates(pool, unit, betas, solver, limit):
    """One-sided EP's error is O(beta), centered EP's O(beta^2). Smooth CNN: centered at
    beta = 0.01 has relative error <= 1e-2 and cosine >= 0.999. With clip units and max-pooling
    the equilibrium is piecewise smooth in beta: a nudge that moves a unit onto a bound or
    switches a pool leaves the piece the reference differentiates (here at beta = 0.01 the
    centered error is 7e-2, cosine 0.99902); from beta = 1e-3 down the rates hold."""
    network = cnn(pool, unit, gain=1.5)
    inputs, targets = batch(8)
    one_sided, centered, last_cosine = _ep_errors(network, inputs, targets, betas, solver=solver[0],
                                                  step_size=solver[1], steps=20000, tol=1e-14)
    assert 0.9 <= log_slope(betas, one_sided) <= 1.1, one_sided
    assert log_slope(betas, centered) >= 1.8, centered
    assert centered[-1] <= limit[0] and last_cosine >= limit[1]


def test_conv_chl_approaches_its_reference_and_corrected_chl_is_closer():
    network = cnn("avg", "sigmoid", gain=1.5)
    inputs, targets = batch(8)
    settings = dict(solver="sweep", step_size=1.0, steps=20000, tol=1e-14)
    gammas = [0.4, 0.2, 0.1]
    plain, corrected = [], []
    for gamma in gammas:
        reference = build_algorithm("chl", gamma=gamma, **settings).reference(network, inputs, targets)
        plain.append(relative_l2(build_algorithm("chl", gamma=gamma, **settings).gradients(network, inputs, targets),
                                 reference))
        corrected.append(relative_l2(build_algorithm("chl", gamma=gamma, corrected=True, **settings)
                                     .gradients(network, inputs, targets), reference))
    assert 0.9 <= log_slope(gammas, plain) <= 1.1, plain
    assert all(c < p for c, p in zip(corrected, plain)), (corrected, plain)


def test_a_coupling_reuses_its_forward_pass_only_at_the_same_point_and_weights():
    """The VJP's forward pass serves g(u) at the same u; a new u, u changed in place or an
    optimiser step (in place) recomputes it (oracle: the module called directly)."""
    from pl_energy.core.couplings import ModuleCoupling

    network = cnn()
    coupling = ModuleCoupling(nn.Sequential(network[1][0], network[1][1]))
    u = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    coupling.add_transpose(torch.zeros_like(u), u, torch.rand(2, 4, 2, 2, dtype=torch.float64), 1.0)
    assert coupling._latest.get(u) is not None and coupling._latest.get(u.clone()) is None
    torch.testing.assert_close(coupling.forward(u), coupling.module(u).detach(), rtol=0, atol=0)
    with torch.no_grad():
        network[1][0].weight.mul_(2.0)
    assert coupling._latest.get(u) is None
    torch.testing.assert_close(coupling.forward(u), coupling.module(u).detach(), rtol=0, atol=0)
    coupling.add_transpose(torch.zeros_like(u), u, torch.rand(2, 4, 2, 2, dtype=torch.float64), 1.0)
    u.mul_(0.5)  # the same tensor changed in place is another point
    assert coupling._latest.get(u) is None
    torch.testing.assert_close(coupling.forward(u), coupling.module(u).detach(), rtol=0, atol=0)
