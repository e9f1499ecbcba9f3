"""Inference solvers, checked against independent oracles.

- Optimality: the state a solver returns satisfies dE/dx = 0 for an energy written here from
  Millidge et al. 2022's equations and differentiated by autograd (not the library's gradients).
- The papers' dynamics: ``solver="gd"`` at Millidge et al. 2022's A.1 settings equals 50 steps of
  x <- x - 0.1 dE/dx written here with autograd, and the update (1/lam) dE/dtheta there.
- Agreement: every solver reaches the same equilibrium (float64, tanh MLPs and a CNN).
- Divergence and settings: rising energies raise or back off, bad settings are refused.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from pl_energy import DivergenceError, build_algorithm, mlp
from pl_energy.algorithms import NotConvergedWarning
from pl_energy.algorithms.predictive_coding import PAPER_SETTINGS
from pl_energy.core import SOLVERS, Loss, PredictiveCodingEnergy, relax
from pl_energy.core.solvers import Balance, relative_residual
from helpers import autograd_activity_gradients, cosine, max_relative, papers_update


def tanh_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh()),
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten()),
        nn.Sequential(nn.Linear(4 * 4 * 4, 12), nn.Tanh()),
        nn.Linear(12, 5),
    )


NETWORKS = {
    "mlp": (lambda: mlp([20, 16, 12, 8, 5], activation="tanh"), (8, 20)),
    "cnn": (tanh_cnn, (8, 1, 8, 8)),
}


@pytest.fixture(params=sorted(NETWORKS))
def tanh_problem(request):
    build, shape = NETWORKS[request.param]
    torch.manual_seed(7)
    network = build().double()
    return network, torch.randn(*shape, dtype=torch.float64), torch.randint(0, 5, (shape[0],))


# --- optimality and agreement -------------------------------------------------------------------
PC_SOLVERS = ("error", "anderson", "newton", "gd", "nesterov")


def test_every_solver_is_tested():
    # sweep, adaptive_sweep: Hopfield only (test_hopfield.py, test_adaptive_sweep.py); newton: test_newton.py
    assert set(SOLVERS) == set(PC_SOLVERS) | {"sweep", "adaptive_sweep", "newton"}


@pytest.mark.parametrize("lam", [0.01, 1.0])
@pytest.mark.parametrize("solver", PC_SOLVERS)
def test_every_solver_reaches_the_equilibrium(solver, lam, tanh_problem):
    network, inputs, targets = tanh_problem
    energy = PredictiveCodingEnergy(network, Loss("cross_entropy"))
    state = energy.nudged(energy.free_state(inputs, targets), lam)
    steps = {"error": 200, "anderson": 200, "newton": 50, "nesterov": 3000, "gd": 20000}[solver]
    step_size = {"error": None, "anderson": None, "newton": None, "nesterov": 0.2, "gd": 0.3}[solver]
    report = relax(energy, state, steps, step_size, tol=1e-12, solver=solver).report
    assert report.converged and report.residual <= 1e-12 and report.steps < steps

    # optimality in the paper's own energy, by autograd
    gradients = autograd_activity_gradients(network, inputs, state.activities[1:], targets, lam)
    for g, x in zip(gradients, state.activities[1:]):
        assert g.norm() <= 1e-10 * (x - 0).norm() + 1e-14

    # the same equilibrium as long descent on the activities, read as the same weight update
    reference_state = energy.nudged(energy.free_state(inputs, targets), lam)
    relax(energy, reference_state, 20000, 0.3, tol=1e-13, solver="gd")
    update = energy.parameter_gradients(state, scale=1 / lam)
    reference = energy.parameter_gradients(reference_state, scale=1 / lam)
    for layer, other in zip(update, reference):
        for g, h in zip(layer, other):
            assert (g - h).norm() <= 1e-10 * h.norm()


def test_anderson_converges_where_the_damped_error_solver_stalls():
    """pc (lam = 1) on a deep tanh net with large weights: the step-1 error map oscillates, the
    damped solver's halvings stall ("settled" on a smooth energy, short of equilibrium), while
    Anderson mixing reaches the equilibrium, checked by autograd in the paper's own energy."""
    torch.manual_seed(0)
    network = mlp([20] + [16] * 9 + [5], activation="tanh").double()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(2.0)
    inputs, targets = torch.randn(32, 20, dtype=torch.float64), torch.randint(0, 5, (32,))
    reports = {}
    for solver in ("error", "anderson"):
        energy = PredictiveCodingEnergy(network, Loss("cross_entropy"))
        state = energy.nudged(energy.free_state(inputs, targets), 1.0)
        reports[solver] = relax(energy, state, 200, tol=1e-8, solver=solver).report
    assert not reports["error"].converged and reports["anderson"].converged and reports["anderson"].steps < 100
    gradients = autograd_activity_gradients(network, inputs, state.activities[1:], targets, 1.0)
    assert max(float(g.norm() / x.norm()) for g, x in zip(gradients, state.activities[1:])) < 1e-7


def test_error_solver_reaches_every_layer_in_its_first_step():
    """Descent on the activities needs L-1 steps before the bottom layer hears from the output;
    descent on the errors sends the loss gradient through the whole network at every step."""
    torch.manual_seed(0)
    network = mlp([10] + [8] * 9 + [3], activation="tanh").double()
    inputs, targets = torch.randn(4, 10, dtype=torch.float64), torch.randint(0, 3, (4,))
    for solver, moved in (("gd", False), ("error", True)):
        energy = PredictiveCodingEnergy(network, Loss("cross_entropy"))
        state = energy.nudged(energy.free_state(inputs, targets), 0.01)
        relax(energy, state, 1, solver=solver)
        assert bool(energy.error(state, 1).abs().max() > 0) is moved


def test_relative_residual_is_scale_free_and_zero_only_at_balance():
    a, b = torch.randn(3, 4), torch.randn(3, 5)
    assert relative_residual([a, b], [a, b]) == pytest.approx(1.0)  # no feedback at all
    assert relative_residual([a * 0, b * 0], [a, b]) == 0.0  # local and feedback terms cancel
    half = relative_residual([0.5 * a, b * 0], [a, b])
    assert half == pytest.approx(relative_residual([50 * a, b * 0], [100 * a, 100 * b]))
    assert relative_residual([a * 0], [a * 0]) == 0.0  # a layer without signal is at rest


@pytest.mark.parametrize("norms, expected", [
    ([[3.0, 0.0], [4.0, 1.0], [1.0, 0.0]], 0.6),  # 3 / (4 + 1) beside 0 / 1
    ([[0.0, 2.0], [0.0, 0.0], [0.0, 0.0]], math.inf),  # 0/0 is 0, g/0 is infinite (not moved yet)
    ([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], 0.0),  # no signal anywhere: at rest
    ([[math.nan, 1.0], [1.0, 1.0], [1.0, 1.0]], math.nan),  # a NaN gradient is not hidden by max
])
def test_the_residual_read_back_is_the_one_kept_on_the_device(norms, expected):
    """``Balance.residual`` (computed on the host from the norms, one read) and ``Balance.ratio``
    (on the device, for the damping) are one definition: max_l g / (a + r), 0/0 = 0, g/0 = inf."""
    balance = Balance(torch.tensor(norms, dtype=torch.float64))
    for value in (balance.residual, float(balance.ratio)):
        assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected)


# --- the papers' dynamics -------------------------------------------------------------------------
def test_gd_at_the_paper_settings_is_the_papers_inference(tanh_problem):
    """Millidge et al. 2022 A.1: 50 steps of x <- x - 0.1 dE/dx, then the update (1/lam) dE/dtheta."""
    network, inputs, targets = tanh_problem
    expected = papers_update(network, inputs, targets, lam=0.01, steps=50, step_size=0.1)
    estimate = build_algorithm("pc_nudge", **PAPER_SETTINGS, lam=0.01).estimate(
        network, inputs, targets)
    assert max_relative(estimate.gradients, expected) <= 1e-10
    report = estimate.inference[0]
    assert (report.solver, report.steps, report.converged) == ("gd", 50, False)
    assert 0 < report.residual < 1


# --- convergence reports ------------------------------------------------------------------------
def test_default_pc_algorithms_converge_and_say_so(tanh_problem):
    network, inputs, targets = tanh_problem
    for name in ("pc_nudge", "pc"):
        algorithm = build_algorithm(name)
        assert (algorithm.solver, algorithm.tol) == ("error", 1e-4)
        with warnings.catch_warnings():
            warnings.simplefilter("error", NotConvergedWarning)
            estimate = algorithm.estimate(network, inputs, targets)
        (report,) = estimate.inference
        assert report.converged and report.residual <= 1e-4 and report.steps <= 10
        assert estimate.converged


def test_reported_residual_is_the_returned_states_in_plain_coordinates(seed_mlp_batch):
    """The papers' gd runs with the first layer in the row space of W_2; the residual it reports must be
    that of the returned activities, measured as the energy defines it."""
    network, inputs, targets = seed_mlp_batch
    energy = PredictiveCodingEnergy(network, Loss("cross_entropy"))
    state = energy.nudged(energy.free_state(inputs, targets), 0.01)
    report = relax(energy, state, 50, 0.1, solver="gd").report
    gradients = autograd_activity_gradients(network, inputs, state.activities[1:], targets, 0.01)
    local = [energy.error(state, index) for index in (1, 2)]
    by_hand = max(float(g.norm() / (a.norm() + (g - a).norm())) for g, a in zip(gradients, local))
    assert report.residual == pytest.approx(by_hand, rel=1e-9)


@pytest.fixture
def clamped_pc():
    """A small tanh PC network with its output clamped (lam = 1): large steps diverge. Returns the
    energy and a function that gives its clamped state at the feedforward pass."""
    torch.manual_seed(2)
    network = mlp([10, 8, 6, 3], activation="tanh").double()
    inputs, targets = torch.randn(16, 10, dtype=torch.float64), torch.randint(0, 3, (16,))
    energy = PredictiveCodingEnergy(network, Loss("cross_entropy"))
    return energy, lambda: energy.nudged(energy.free_state(inputs, targets), 1.0)


def test_steps_undone_by_a_back_off_are_not_counted(clamped_pc):
    energy, clamped_state = clamped_pc
    state = clamped_state()
    relaxation = relax(energy, state, 3, 8.0, record=True, solver="error")
    report = relaxation.report
    assert report.backoffs >= 1
    assert report.steps == relaxation.trace.steps == len(relaxation.trace.total) - 1


def test_a_step_cap_hit_before_tol_warns_once_with_the_fix(tanh_problem):
    network, inputs, targets = tanh_problem
    algorithm = build_algorithm("pc", solver="gd", steps=3, tol=1e-8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            estimate = algorithm.estimate(network, inputs, targets)
    messages = [w for w in caught if issubclass(w.category, NotConvergedWarning)]
    assert len(messages) == 1 and "raise steps" in str(messages[0].message)
    assert not estimate.converged and estimate.inference[0].residual > 1e-8


def test_error_solver_settles_on_relu_kinks_and_says_it_did_not_converge():
    """On ReLU the equilibrium puts a few units on their kink: the residual cannot vanish there,
    the damped steps settle the state (reported as settled, not converged), and a tighter
    tolerance moves it no further than tol."""
    torch.manual_seed(1)
    network = mlp([30, 40, 20, 5]).double()
    inputs, targets = torch.randn(32, 30, dtype=torch.float64), torch.randint(0, 5, (32,))
    states = []
    for tol in (1e-5, 1e-9):
        energy = PredictiveCodingEnergy(network, Loss("cross_entropy"))
        state = energy.nudged(energy.free_state(inputs, targets), 1.0)
        report = relax(energy, state, 500, tol=tol, solver="error").report
        assert report.settled and not report.converged and report.residual > tol
        assert report.step_size < 1.0
        states.append(state)
    for x, y in zip(states[0].activities[1:], states[1].activities[1:]):
        assert (x - y).norm() <= 1e-3 * y.norm()


# --- divergence ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seed_mlp_batch(mnist_tensors):
    images, labels = mnist_tensors
    torch.manual_seed(0)
    return mlp([784, 128, 64, 10]).double(), images[:64].double(), labels[:64]


@pytest.mark.parametrize("name,step_size", [("pc_nudge", 1.0), ("pc_nudge", 1.5), ("chl", 2.0)])
def test_a_rising_energy_raises_instead_of_returning_a_gradient(name, step_size, seed_mlp_batch):
    network, inputs, targets = seed_mlp_batch
    algorithm = build_algorithm(name, solver="gd", step_size=step_size, tol=None)
    with pytest.raises(DivergenceError, match=rf"at step \d+ with step_size {step_size:g} "
                                              r"\(last good step \d+\); lower step_size"):
        algorithm.gradients(network, inputs, targets)


def test_auto_step_size_leaves_a_stable_step_alone(seed_mlp_batch):
    network, inputs, targets = seed_mlp_batch
    auto = build_algorithm("pc_nudge", lam=0.01, solver="gd", step_size="auto", steps=50, tol=None)
    fixed = build_algorithm("pc_nudge", lam=0.01, solver="gd", step_size=0.1, steps=50, tol=None)
    estimate = auto.estimate(network, inputs, targets)
    assert (estimate.inference[0].backoffs, estimate.inference[0].step_size) == (0, 0.1)
    # (the fixed step runs with the first layer in W_2's row space: the same dynamics, other rounding)
    assert max_relative(estimate.gradients, fixed.gradients(network, inputs, targets)) <= 1e-12
    reference = build_algorithm("bp").gradients(network, inputs, targets)
    assert cosine(estimate.gradients, reference) > 0.99


def test_auto_backs_off_from_a_step_that_diverges(clamped_pc):
    energy, clamped_state = clamped_pc
    fixed = clamped_state()
    with pytest.raises(DivergenceError):
        relax(energy, fixed, 200, 3.0, solver="gd")
    state = clamped_state()
    first = float(energy.components(state)[2])
    relaxation = relax(energy, state, 2000, "auto", tol=1e-10, solver="gd")
    assert relaxation.report.converged
    assert float(energy.components(state)[2]) < first


@pytest.mark.parametrize("steps", [0, 5])
@pytest.mark.parametrize("solver", ["error", "gd"])
def test_a_non_finite_start_is_refused_even_when_no_step_is_taken(solver, steps, clamped_pc):
    """The starting energy is read only before the first move (a converged start skips it), and
    whenever the start is returned with a residual that is not finite."""
    energy, clamped_state = clamped_pc
    state = clamped_state()
    state.activities[1] = state.activities[1] * math.nan
    with pytest.raises(DivergenceError, match="before inference starts"):
        relax(energy, state, steps, tol=1e-6, solver=solver)


@pytest.mark.parametrize("watch", [{"record": True}, {"record": False}, {"tol": 1e-12}])
def test_divergence_names_the_same_first_bad_step_however_energies_are_watched(watch, clamped_pc):
    energy, clamped_state = clamped_pc
    messages = []
    for settings in (watch, {"record": True}):
        with pytest.raises(DivergenceError) as error:
            relax(energy, clamped_state(), 400, 4.0, solver="gd", **settings)
        messages.append(str(error.value))
    assert messages[0] == messages[1]


# --- settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize("settings,match", [
    ({"step_size": 0.0}, "step_size must be > 0"),
    ({"step_size": -1.0}, "step_size must be > 0"),
    ({"step_size": math.nan}, "step_size must be > 0"),
    ({"step_size": math.inf}, "step_size must be > 0"),
    ({"step_size": "fast"}, "positive number or 'auto'"),
    ({"tol": 0.0}, r"tol .* must lie in \(0, 1\)"),
    ({"tol": 2.0}, r"tol .* must lie in \(0, 1\)"),
    ({"tol": math.nan}, r"tol .* must lie in \(0, 1\)"),
    ({"steps": -1}, "steps must be an integer >= 0"),
    ({"steps": 2.5}, "steps must be an integer >= 0"),
    ({"solver": "bogus"}, "unknown solver 'bogus'; choose one of"),
])
def test_bad_solver_settings_are_refused_when_the_algorithm_is_built(settings, match):
    with pytest.raises(ValueError, match=match):
        build_algorithm("pc_nudge", **settings)


def test_error_solver_is_refused_for_hopfield_energies():
    torch.manual_seed(0)
    network = mlp([5, 4, 3])
    with pytest.raises(TypeError, match="solver 'error' moves prediction errors"):
        build_algorithm("ep", solver="error").gradients(network, torch.randn(2, 5), torch.tensor([0, 1]))


def test_nesterov_relaxes_the_hopfield_energy_to_the_same_free_equilibrium():
    torch.manual_seed(3)
    network = mlp([6, 5, 4], activation="sigmoid").double()
    inputs = torch.randn(4, 6, dtype=torch.float64)
    plain = build_algorithm("ep", solver="gd", step_size=0.5, steps=5000, tol=1e-12).predict(network, inputs)
    algorithm = build_algorithm("ep", solver="nesterov", step_size=0.5, steps=5000, tol=1e-12)
    fast = algorithm.predict(network, inputs)
    assert torch.allclose(plain, fast, rtol=0, atol=1e-10)
    # and it is the equilibrium of Scellier & Bengio's energy, written here:
    # x_1 = sigma'(x_1) (W_1 x_0 + b_1 + W_2^T x_2), x_2 = W_2 sigma(x_1) + b_2
    _, state, _ = algorithm.free_phase(network, inputs, None, Loss("mse"))
    x1, x2 = state.activities[1], state.activities[2]
    first, second = network[0][0], network[1]
    slope = torch.sigmoid(x1) * (1 - torch.sigmoid(x1))
    torch.testing.assert_close(x1, slope * (first(inputs) + x2 @ second.weight), rtol=0, atol=1e-10)
    torch.testing.assert_close(x2, second(torch.sigmoid(x1)), rtol=0, atol=1e-10)


# --- host reads ---------------------------------------------------------------------------------
def host_reads(monkeypatch) -> list[str]:
    """A list that grows at every read of a tensor's value back to Python (float, bool, int,
    item, tolist): the host synchronisations a GPU would wait on."""
    reads: list[str] = []
    for name in ("__float__", "__bool__", "__int__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


@pytest.mark.parametrize("settings", [{"solver": "gd", "step_size": 0.1}, {"solver": "gd", "step_size": 0.1,
                                                                             "record": True}])
def test_fixed_steps_read_nothing_back_while_they_run(settings, clamped_pc, monkeypatch):
    """The papers' fixed steps (the plain loop, also with a trace) read the watched energies
    and the residual back once, at the end: the host reads do not grow with the steps."""
    energy, clamped_state = clamped_pc
    counts = []
    for steps in (10, 40):
        state = clamped_state()
        reads = host_reads(monkeypatch)
        relax(energy, state, steps, **settings)
        counts.append(len(reads))
        monkeypatch.undo()
    assert counts[0] == counts[1] <= 4


def test_the_residual_is_checked_where_its_rate_says_the_phase_converges(monkeypatch):
    """A linear Hopfield energy (identity units: each sweep contracts the error at one rate) at
    a fixed factor: recorded (a check every sweep) the phase converges at step n; watched (checks
    at most ``check_every`` apart, sooner where the rate between the last two says tol is
    reached) it stops at n, n + 1 or n + 2, where checks at the stride alone stopped at the next
    multiple of 5, and with no more checks than the stride would have made."""
    from pl_energy.core import HopfieldEnergy, solvers

    torch.manual_seed(4)
    network = mlp([12, 16, 12, 8, 4], activation="identity").double()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(0.6)
    energy = HopfieldEnergy(network, Loss("mse"))
    inputs = torch.randn(6, 12, dtype=torch.float64)
    for tol in (1e-8, 5e-9, 1e-12):  # n = 26, 27, 42: the stride alone stops 3-4 sweeps later
        exact = relax(energy, energy.free_state(inputs, None), 500, 1.0, tol=tol, solver="sweep",
                      record=True).report
        checks = []
        measure = solvers.Balance.of.__func__
        monkeypatch.setattr(solvers.Balance, "of", classmethod(lambda cls, *a: checks.append(1) or measure(cls, *a)))
        watched = relax(energy, energy.free_state(inputs, None), 500, 1.0, tol=tol, solver="sweep").report
        monkeypatch.undo()
        assert exact.converged and watched.converged and exact.steps > 10
        assert exact.steps <= watched.steps <= exact.steps + 2
        assert len(checks) <= exact.steps // 5 + 2  # the stride's checks: 0, 5, ..., and the one past n


def test_an_energy_without_a_minimum_is_named_not_a_division_by_zero():
    """A Hopfield energy without a minimum (strong ReLU couplings) runs away at a constant
    residual: the rate between two checks is 1 to rounding, and the check schedule falls back to
    the stride (once a ZeroDivisionError from log(1)); the runaway is named as divergence."""
    torch.manual_seed(1)
    network = mlp([12, 10, 8, 6, 4], activation="relu").double()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(1.5)
    inputs, targets = torch.rand(5, 12, dtype=torch.float64), torch.randint(0, 4, (5,))
    with pytest.raises(DivergenceError, match="without bound"):
        build_algorithm("ep", gamma=1.0).estimate(network, inputs, targets)
