"""The nudge as a finite-difference step (``pl_energy.core.nudge``), checked against oracles
written here: backprop by autograd, the finite-difference error model (error = C h one-sided,
C h^2 centered, C measured at fixed nudges), EP's implicit-differentiation reference.

- Difference form: the PC energy's errors are carried, so a weak nudge stays exact in float32.
- ``lam="auto"`` / ``beta="auto"``: the first-order displacement is the dtype's step, and the
  error is what the error model predicts for that step.
- ``Estimate.error_bound`` is the estimate's distance from backprop, and warns past its tolerance.
- EP's tolerances follow the nudge: O(beta) and O(beta^2) down to beta = 1e-4 at the defaults.
- Centered EP's ``error_bound`` is its embedded estimate (against its one-sided half), checked
  against a one-sided run and against EP's reference.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from pl_energy import EstimateErrorWarning, build_algorithm, mlp
from pl_energy.core import Loss
from pl_energy.core.solvers import relative_residual
from helpers import layer_distances, log_slope, relative_l2


def _tanh_problem(dtype=torch.float32, depth: int = 6, seed: int = 0):
    torch.manual_seed(seed)
    network = mlp([20] + [16] * depth + [5], activation="tanh").to(dtype)
    return network, torch.randn(32, 20, dtype=dtype), torch.randint(0, 5, (32,))


def _autograd_bp(network, inputs, targets) -> dict[str, torch.Tensor]:
    """Backprop in float64 on a copy, by plain autograd (not the library's bp)."""
    import copy

    twin = copy.deepcopy(network).double()
    loss = torch.nn.functional.cross_entropy(twin(inputs.double()), targets)
    trained = [(name, p) for name, p in twin.named_parameters() if p.requires_grad]
    return dict(zip([name for name, _ in trained], torch.autograd.grad(loss, [p for _, p in trained])))


def _layer_errors(estimate: dict, reference: dict) -> dict[str, float]:
    """||u_l - r_l|| / ||r_l|| per top-level layer, written here from the definition."""
    sums: dict[str, list[float]] = {}
    for name, r in reference.items():
        layer = name.split(".")[0]
        u = estimate[name].double()
        entry = sums.setdefault(layer, [0.0, 0.0])
        entry[0] += float((u - r).pow(2).sum())
        entry[1] += float(r.pow(2).sum())
    return {layer: math.sqrt(d / r) for layer, (d, r) in sums.items()}


def test_a_weak_nudge_stays_exact_in_float32():
    """Carried errors: at lam = 1e-6 the float32 estimate is within 1e-4 of float64 backprop in
    every layer (formed as x - mu it was off by 7% at lam = 1e-4), and the one-sided error is
    linear in lam from 1e-2 down to 1e-5."""
    network, inputs, targets = _tanh_problem()
    reference = _autograd_bp(network, inputs, targets)
    lams = [1e-2, 1e-3, 1e-4, 1e-5]
    worst = [max(_layer_errors(build_algorithm("pc_nudge", lam=lam).gradients(network, inputs, targets),
                               reference).values()) for lam in lams]
    assert 0.9 <= log_slope(lams, worst) <= 1.1, worst
    tiny = build_algorithm("pc_nudge", lam=1e-6).gradients(network, inputs, targets)
    assert max(_layer_errors(tiny, reference).values()) < 1e-4


@pytest.mark.parametrize("solver,centered,step", [
    ("error", False, torch.finfo(torch.float64).eps), ("error", True, torch.finfo(torch.float64).eps),
    ("nesterov", False, torch.finfo(torch.float64).eps ** (1 / 2)),
    ("nesterov", True, torch.finfo(torch.float64).eps ** (1 / 3))])
def test_the_automatic_nudge_is_the_finite_difference_step(solver, centered, step):
    """lam="auto" moves the hidden activity of the sample and layer it moves most by a step of
    its size (at least the batch's mean size) at first order, the response r_l = -J^T...dL/dmu_L
    written here by autograd: one rounding unit eps where the errors are carried (the error
    solvers), eps^(1/2) (centered eps^(1/3)) where the state is the activities."""
    network, inputs, targets = _tanh_problem(torch.float64)
    estimate = build_algorithm("pc_nudge", centered=centered, solver=solver).estimate(network, inputs, targets)
    activities = [inputs.requires_grad_(False)]
    for layer in network:
        activities.append(layer(activities[-1]).detach())
    hidden = [a.requires_grad_(True) for a in activities[1:-1]]
    # dL/dx_l of the per-sample loss, by autograd through the layers above each hidden activity
    ratios = []
    for index, activity in enumerate(hidden, start=1):
        x = activity
        for layer in list(network)[index:]:
            x = layer(x)
        (adjoint,) = torch.autograd.grad(torch.nn.functional.cross_entropy(x, targets, reduction="sum"), activity)
        size = activity.detach().norm(dim=1)
        ratios.append(float((adjoint.norm(dim=1) / torch.maximum(size, size.mean())).max()))  # the sample moved most
    assert estimate.nudge * max(ratios) == pytest.approx(step, rel=1e-9)


@pytest.mark.parametrize("centered,order", [(False, 1), (True, 2)])
def test_the_automatic_nudges_error_is_the_error_models(centered, order):
    """Where the state is the activities (solver nesterov), error(lam) = C lam^order: C measured
    at two fixed nudges predicts the error at "auto" within a factor of 2 (float64, where BP is
    known)."""
    network, inputs, targets = _tanh_problem(torch.float64, depth=4, seed=1)
    reference = _autograd_bp(network, inputs, targets)

    def error(lam):
        algorithm = build_algorithm("pc_nudge", lam=lam, centered=centered, solver="nesterov", tol=1e-12,
                                    steps=3000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the cap: the residual's floor is near 1e-12
            estimate = algorithm.estimate(network, inputs, targets)
        return relative_l2(estimate.gradients, reference), estimate.nudge

    (large, _), (small, _) = error(1e-2), error(3e-3)
    assert log_slope([1e-2, 3e-3], [large, small]) == pytest.approx(order, abs=0.15)
    constant = small / 3e-3 ** order
    measured, nudge = error("auto")
    predicted = constant * nudge ** order
    assert predicted > 1e-12 and predicted / 2 <= measured <= 2 * predicted, (measured, predicted)


@pytest.mark.parametrize("network_kind", ["tanh", "relu_maxpool"])
def test_the_carried_automatic_nudge_is_as_exact_as_float32_backprop(network_kind):
    """With the errors carried (solver error), lam="auto" is one rounding unit: the float32
    estimate is as close to float64 backprop as float32 backprop itself is (within 3x, and
    1e-6), in every layer, and inference converges at its first-order start, also on a ReLU /
    max-pooling convnet whose blank input margins tie its pooling windows."""
    if network_kind == "tanh":
        network, inputs, targets = _tanh_problem(torch.float32, depth=8, seed=3)
    else:
        network, inputs, targets = _tied_convnet()
    reference = _autograd_bp(network, inputs, targets)
    estimate = build_algorithm("pc_nudge").estimate(network, inputs, targets)
    backprop = _layer_errors(build_algorithm("bp").gradients(network, inputs, targets), reference)
    for layer, error in _layer_errors(estimate.gradients, reference).items():
        assert error <= 3 * backprop[layer] + 1e-6, (layer, error, backprop[layer])
    assert estimate.converged and estimate.inference[0].steps <= 1


def _tied_convnet():
    """A ReLU / max-pooling convnet on images with a blank margin (as MNIST's): identical
    convolution outputs tie whole pooling windows."""
    from pl_energy.core.networks import ConvNet

    torch.manual_seed(4)
    network = ConvNet(in_shape=(1, 12, 12), channels=(4, 6), num_classes=5, hidden=(16,))
    inputs = torch.zeros(16, 1, 12, 12)
    inputs[:, :, 3:9, 3:9] = torch.rand(16, 1, 6, 6)
    return network, inputs, torch.randint(0, 5, (16,))


def test_the_error_bound_is_the_distance_from_backprop_along_training():
    """Along 20 Adam steps of PC-Nudge at the paper's lam = 0.01 and at "auto", each layer's
    ``error_bound`` is its relative error against autograd's backprop (to 1e-3 of itself); at
    lam = 0.01 it grows past the 5% tolerance within these steps (and warns)."""
    network, inputs, targets = _tanh_problem(torch.float64, depth=6, seed=2)
    for lam in (0.01, "auto"):
        algorithm = build_algorithm("pc_nudge", lam=lam)
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
        for _ in range(20):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EstimateErrorWarning)
                estimate = algorithm.estimate(network, inputs, targets)
            true = _layer_errors(estimate.gradients, _autograd_bp(network, inputs, targets))
            assert set(true) == set(estimate.error_bound)
            for layer, value in true.items():
                assert estimate.error_bound[layer] == pytest.approx(value, rel=1e-3, abs=1e-12)
            optimizer.zero_grad()
            for parameter, gradient in zip(network.parameters(), estimate.gradients.values()):
                parameter.grad = gradient
            optimizer.step()


def test_an_estimate_past_its_error_tolerance_warns():
    network, inputs, targets = _tanh_problem()
    with pytest.warns(EstimateErrorWarning, match=r"off its vanishing-nudge limit .* in layer \d+, above error_tolerance"):
        build_algorithm("pc_nudge", lam=1.0).estimate(network, inputs, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EstimateErrorWarning)
        build_algorithm("pc_nudge").estimate(network, inputs, targets)
        build_algorithm("pc").estimate(network, inputs, targets)  # lam = 1 is not meant to be BP
    assert build_algorithm("pc_nudge", error_estimate=False).estimate(network, inputs, targets).error_bound is None


def test_a_phase_measured_from_its_start_has_not_converged_before_it_moves():
    gradient, local = [torch.ones(3)], [torch.ones(3)]
    assert relative_residual(gradient, local, start=(gradient, local)) == math.inf
    assert relative_residual([torch.zeros(3)], local, start=([torch.zeros(3)], local)) == 0.0
    moved = relative_residual([0.1 * torch.ones(3)], [2 * torch.ones(3)], start=(gradient, local))
    assert moved == pytest.approx(0.1 / ((2 - 1) + abs((0.1 - 2) - (1 - 1))))  # |g| / (|da| + |d(g - a)|)


def test_ep_follows_the_theorys_rates_at_the_default_tolerance():
    """One-sided O(beta), centered O(beta^2), down to beta = 1e-4 in float64 with every other
    setting at its default (the nudged phases' tolerance is relative to the nudge; measured
    against the O(1) state, centered EP's error floored at 5e-4 whatever beta was)."""
    torch.manual_seed(0)
    network = mlp([20, 16, 12, 5], activation="tanh").double()
    inputs, targets = torch.rand(16, 20, dtype=torch.float64), torch.randint(0, 5, (16,))
    reference = build_algorithm("ep", tol=1e-12, steps=5000).reference(network, inputs, targets)
    betas = [1e-2, 1e-3, 1e-4]
    for centered, order in ((False, 1), (True, 2)):
        errors = [relative_l2(build_algorithm("ep", beta=beta, centered=centered).gradients(network, inputs, targets),
                              reference) for beta in betas]
        assert log_slope(betas, errors) == pytest.approx(order, abs=0.1), errors
    automatic = build_algorithm("ep", beta="auto").estimate(network, inputs, targets)
    assert relative_l2(automatic.gradients, reference) < 1e-8 and automatic.converged


def test_pc_energy_difference_form_reads_the_carried_error():
    """The error a move set is the one read back, bit for bit, while x_l and mu_l are those
    it was set with; a changed activity is read as x_l - mu_l again."""
    network, inputs, targets = _tanh_problem(torch.float32, depth=2)
    energy = build_algorithm("pc_nudge").energy(network, Loss("cross_entropy"))
    state = energy.nudged(energy.free_state(inputs, targets), 1e-3)
    small = 1e-9 * torch.randn_like(state.activities[1])
    energy.set_error(state, 1, small)
    assert torch.equal(energy.error(state, 1), small)
    assert not torch.equal(state.activities[1] - state.linearizations[0].output, small)  # cancels
    energy.set_activity(state, 1, state.activities[1] + 1.0)
    assert torch.allclose(energy.error(state, 1), small + 1.0, atol=1e-6)


def test_a_sample_with_a_dead_hidden_layer_does_not_underflow_the_automatic_nudge():
    """A sample whose ReLU layer is all off has a zero activity there: measured against its own
    size lam underflowed (6e-42 in float32) and every gradient was NaN; against the batch's mean
    size the estimate is within 1e-3 of autograd's backprop."""
    torch.manual_seed(1)
    network = mlp([20, 32, 4, 10], activation="relu")
    with torch.no_grad():
        network[1][0].bias.fill_(-0.3)  # most samples: layer 2 all off
    inputs, targets = torch.randn(64, 20), torch.randint(0, 10, (64,))
    estimate = build_algorithm("pc_nudge").estimate(network, inputs, targets)
    assert 1e-8 < estimate.nudge < 1
    assert max(_layer_errors(estimate.gradients, _autograd_bp(network, inputs, targets)).values()) < 1e-3


def test_ep_at_its_defaults_converges_in_float32():
    """The nudged phases' rounding floor is that of float32 (with 10 eps / h the default's nudged
    phases of a sigmoid net ran to the 500-step cap where they had taken 15)."""
    torch.manual_seed(0)
    network = mlp([784, 256, 64, 10], activation="sigmoid")
    inputs, targets = torch.rand(32, 784), torch.randint(0, 10, (32,))
    estimate = build_algorithm("ep").estimate(network, inputs, targets)
    assert estimate.converged and max(report.steps for report in estimate.inference) <= 50


def test_an_ep_nudge_that_float32_cannot_resolve_is_refused_unless_allowed():
    """beta = 2e-6 (17 machine epsilons) was 17% (centered) and 34% (one-sided) off its
    float64 value with only a warning: the nudge's move is measured, and refused."""
    from pl_energy import PrecisionWarning

    torch.manual_seed(0)
    network = mlp([20, 16, 5], activation="clip")
    inputs, targets = torch.rand(16, 20), torch.randint(0, 5, (16,))
    with pytest.raises(ValueError, match=r"resolves to about \d+%.*allow_imprecise=True"):
        build_algorithm("ep", beta=2e-6, centered=False).estimate(network, inputs, targets)
    with pytest.warns(PrecisionWarning):
        build_algorithm("ep", beta=2e-6, allow_imprecise=True).estimate(network, inputs, targets)


def test_frozen_parameters_are_not_part_of_the_error_bound():
    """A frozen parameter is not trained: its error is left out of its layer's bound, and a
    layer without trainable parameters has none."""
    network, inputs, targets = _tanh_problem(torch.float64, depth=2)
    network[0][0].weight.requires_grad_(False)
    for parameter in network[1].parameters():
        parameter.requires_grad_(False)
    estimate = build_algorithm("pc_nudge", lam=0.01).estimate(network, inputs, targets)
    true = _layer_errors(estimate.gradients, _autograd_bp(network, inputs, targets))
    assert set(estimate.error_bound) == set(true) == {"0", "2"}  # layer 1 is frozen
    for layer, value in true.items():
        assert estimate.error_bound[layer] == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize("activation", ["clip", "sigmoid"])
def test_centered_eps_embedded_error_estimate_is_its_one_sided_halfs_distance_and_bounds_its_error(activation):
    """Oracles: a separate one-sided EP run at the same beta (its own phases, relaxed tightly in
    float64), and EP's implicit-differentiation reference. The embedded estimate is the centered
    update's distance from the one-sided one, relative to it, and the centered update's distance
    from the reference is at most twice it (measured: at most 1.5 times over 4 seeds x 4 betas
    x clip, ReLU, tanh, sigmoid units, where nudges cross kinks; 0.002-0.7 of it with smooth
    units); one-sided EP has none, nor EP with error_estimate=False."""
    torch.manual_seed(0)
    network = mlp([20, 16, 16, 5], activation=activation).double()
    inputs, targets = torch.rand(32, 20, dtype=torch.float64), torch.randint(0, 5, (32,))
    tight = dict(tol=1e-11, steps=5000)
    for beta in (0.5, 0.2, 0.05):
        centered = build_algorithm("ep", beta=beta, **tight)
        estimate = centered.estimate(network, inputs, targets)
        one_sided = build_algorithm("ep", beta=beta, centered=False, **tight).gradients(network, inputs, targets)
        expected = layer_distances(estimate.gradients, one_sided, network)
        assert estimate.error_bound == pytest.approx(expected, rel=1e-6)
        error = layer_distances(estimate.gradients, centered.reference(network, inputs, targets), network)
        assert max(error.values()) <= 2 * max(estimate.error_bound.values()), (beta, error, estimate.error_bound)
    assert build_algorithm("ep", centered=False).estimate(network, inputs, targets).error_bound is None
    assert build_algorithm("ep", error_estimate=False).estimate(network, inputs, targets).error_bound is None


def test_eps_embedded_estimate_at_a_small_nudge_is_not_the_free_phases_residual():
    """At the default tol the free phase stops at a residual of 1e-6 of the state, which the
    one-sided half reads divided by h: the embedded estimate then read 1.31 at beta = "auto" on
    a float64 tanh MLP (h = 7e-6). The free phase now relaxes on to tol * h first, as one-sided
    EP's does. Oracles: a one-sided run at the same beta and tolerance (its own phases), and EP's
    reference, tightly converged."""
    network, inputs, targets = _tanh_problem(torch.float64, depth=3)
    reference = build_algorithm("ep", tol=1e-11, steps=20000).reference(network, inputs, targets)
    for beta in ("auto", 1e-3):
        estimate = build_algorithm("ep", beta=beta, steps=5000).estimate(network, inputs, targets)
        assert estimate.converged
        one_sided = build_algorithm("ep", beta=estimate.nudge, centered=False, steps=5000).gradients(
            network, inputs, targets)
        assert estimate.error_bound == pytest.approx(layer_distances(estimate.gradients, one_sided, network), rel=1e-2)
        error = layer_distances(estimate.gradients, reference, network)
        assert max(error.values()) <= 2 * max(estimate.error_bound.values()), (beta, error, estimate.error_bound)
    assert max(estimate.error_bound.values()) < 0.05  # beta = 1e-3: the one-sided half's O(h) error, h = 8e-4
