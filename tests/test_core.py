"""Checked against autograd and against definitions: the energy core's parts, one at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pl_energy import ALGORITHMS, build_algorithm, mlp
from pl_energy.core import HopfieldEnergy, Loss, PredictiveCodingEnergy, relax
from pl_energy.core.linearization import AutogradLinearization, LayerLinearizer
from pl_energy.core.residual import Residual, ScaledLinear
from helpers import max_relative, relative_l2



pytestmark = pytest.mark.usefixtures("float64")


@pytest.fixture
def problem():
    torch.manual_seed(0)
    network = mlp([7, 6, 5, 4], activation="tanh")
    return network, torch.randn(3, 7), torch.randint(0, 4, (3,))


# --- networks and losses ----------------------------------------------------------------------
def test_mlp_matches_the_seed_architectures():
    network = mlp([784, 128, 64, 10])
    assert len(network) == 3
    assert isinstance(network[0][1], nn.ReLU) and isinstance(network[-1], nn.Linear)
    assert network(torch.zeros(2, 784)).shape == (2, 10)
    assert [name for name, _ in network.named_parameters()] == [
        "0.0.weight", "0.0.bias", "1.0.weight", "1.0.bias", "2.weight", "2.bias"]
    assert [p.shape[0] for p in mlp([50176, 4096, 2048, 1024, 27]).parameters()][::2] == [4096, 2048, 1024, 27]
    assert all(p.dim() == 2 for p in mlp([3, 4, 2], bias=False).parameters())


@pytest.mark.parametrize("bad", [[5], [5, 0]])
def test_mlp_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="positive sizes"):
        mlp(bad)


def test_unknown_activation_lists_the_valid_ones():
    with pytest.raises(ValueError, match="choose one of .*relu"):
        mlp([3, 4, 2], activation="swish")


@pytest.mark.parametrize("name", ["mse", "cross_entropy"])
@pytest.mark.parametrize("dense", [False, True])
def test_loss_gradient_matches_autograd(name, dense):
    torch.manual_seed(0)
    loss = Loss(name)
    output = torch.randn(5, 4, requires_grad=True)
    targets = torch.randint(0, 4, (5,))
    if dense:
        targets = torch.softmax(torch.randn(5, 4), -1)
    prepared = loss.prepare_targets(targets, output)
    (grad,) = torch.autograd.grad(loss.value(output, prepared), output)
    assert torch.allclose(loss.per_sample_gradient(output.detach(), prepared), grad * 5, atol=1e-12)


def test_losses_are_the_documented_ones():
    output, targets = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([1])
    assert Loss("mse").value(output, Loss("mse").prepare_targets(targets, output)) == pytest.approx(
        0.5 * (1 + 1 + 0.25))
    assert Loss("cross_entropy").value(output, targets) == pytest.approx(F.cross_entropy(output, targets).item())


def test_bad_targets_are_explained():
    output = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="batch size 2 but the output has 4"):
        Loss("mse").prepare_targets(torch.zeros(2, dtype=torch.long), output)
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 3\)"):
        Loss("cross_entropy").prepare_targets(torch.tensor([0, 1, 2, 3]), output)
    with pytest.raises(ValueError, match="output's shape"):
        Loss("mse").prepare_targets(torch.zeros(4, 5), output)
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        Loss("l1")


# --- linearisation: closed forms against autograd ----------------------------------------------
def _closed_form_layers():
    dense = [nn.Linear(6, 4), nn.Linear(6, 4, bias=False),
             nn.Sequential(nn.Linear(6, 4), nn.ReLU()), nn.Sequential(nn.Linear(6, 4), nn.Tanh()),
             nn.Sequential(nn.Linear(6, 4), nn.Sigmoid()), nn.Sequential(nn.Linear(6, 4), nn.Hardsigmoid())]
    # ResidualMLP's layers (core.residual: scaled linear maps, pre-activation residual blocks)
    scaled = [ScaledLinear(6, 6, scale=0.3, unit_init=True), ScaledLinear(6, 6, scale=2.0, bias=False),
              nn.Sequential(nn.Tanh(), ScaledLinear(6, 6, scale=0.1)),
              Residual(nn.Sequential(nn.ReLU(), ScaledLinear(6, 6, scale=0.05, unit_init=True))),
              Residual(nn.Sequential(nn.Tanh(), ScaledLinear(6, 6, scale=1.0, bias=False)))]
    return [(layer, "DenseLinearization") for layer in dense] + [(layer, "ScaledLinearization") for layer in scaled]


@pytest.mark.parametrize("layer, kind", _closed_form_layers(), ids=lambda v: v if isinstance(v, str) else repr(v))
def test_closed_form_linearization_matches_autograd(layer, kind):
    torch.manual_seed(1)
    layer = layer.double()
    x = torch.randn(5, 6) * 2
    cotangent = torch.randn(5, layer(x).shape[1])
    fast = LayerLinearizer(layer)(x)
    assert type(fast).__name__ == kind
    slow = AutogradLinearization(layer, x, needs_input_vjp=True)
    assert torch.allclose(fast.output, slow.output, atol=1e-14)
    assert torch.allclose(fast.input_vjp(cotangent), slow.input_vjp(cotangent), atol=1e-13)
    assert torch.allclose(fast.add_input_vjp(x, cotangent, -0.5), x - 0.5 * slow.input_vjp(cotangent), atol=1e-13)
    both = fast.vjp(cotangent)
    assert torch.allclose(both[0], slow.input_vjp(cotangent), atol=1e-13)
    for a, b, c in zip(fast.parameter_vjp(cotangent), slow.parameter_vjp(cotangent), both[1]):
        assert torch.allclose(a, b, atol=1e-13) and torch.allclose(a, c, atol=1e-14)


def test_a_residual_block_with_a_shortcut_or_a_subclass_goes_through_autograd():
    class Doubled(ScaledLinear):
        def forward(self, x):
            return 2 * super().forward(x)

    class Twice(nn.Sequential):  # a Sequential with its own forward computes as it says
        def forward(self, x):
            return 2 * super().forward(x)

    for layer in (Residual(nn.Sequential(nn.Tanh(), ScaledLinear(6, 6))), Doubled(6, 6),
                  Twice(nn.ReLU(), ScaledLinear(6, 6)), Twice(nn.Linear(6, 6), nn.ReLU()),
                  Residual(Twice(nn.Tanh(), ScaledLinear(6, 6)))):
        if isinstance(layer, Residual) and not isinstance(layer.branch, Twice):
            layer.shortcut = nn.Linear(6, 6)
        x = torch.randn(3, 6)
        linearization = LayerLinearizer(layer)(x)
        assert type(linearization).__name__ == "AutogradLinearization"
        assert torch.allclose(linearization.output, layer(x))


# --- energies: gradients against autograd of the written-out energy ----------------------------
def test_pc_energy_gradients_match_autograd(problem):
    network, inputs, targets = problem
    lam, precisions = 0.3, [2.0, 0.5]
    energy = PredictiveCodingEnergy(network, Loss("cross_entropy"), precisions=precisions)
    state = energy.nudged(energy.free_state(inputs, targets), lam)
    for index in (1, 2):
        energy.set_activity(state, index, state.activities[index] + 0.1 * torch.randn_like(state.activities[index]))

    x1, x2 = (a.clone().requires_grad_() for a in state.activities[1:])
    written = (precisions[0] / 2 * (x1 - network[0](inputs)).pow(2).sum()
               + precisions[1] / 2 * (x2 - network[1](x1)).pow(2).sum()
               + lam * F.cross_entropy(network[2](x2), targets, reduction="sum"))
    g1, g2 = torch.autograd.grad(written, (x1, x2), retain_graph=True)
    ours = energy.activity_gradients(state)
    assert torch.allclose(ours[0], g1, atol=1e-12) and torch.allclose(ours[1], g2, atol=1e-12)
    weight_grads = torch.autograd.grad(written / 3, list(network.parameters()))
    flat = [g for layer in energy.parameter_gradients(state) for g in layer]
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(flat, weight_grads))
    internal, supervised, total = energy.components(state)
    assert total * 3 == pytest.approx(written.item())
    assert supervised == pytest.approx(F.cross_entropy(network[2](x2), targets).item())


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "hardsigmoid"])
def test_hopfield_energy_gradients_match_autograd(activation):
    torch.manual_seed(2)
    network = mlp([5, 4, 3], activation=activation)
    energy = HopfieldEnergy(network, Loss("mse"), gamma=0.7)
    inputs, targets = torch.randn(6, 5), torch.randint(0, 3, (6,))
    state = energy.nudged(energy.free_state(inputs, targets), beta=0.4)
    x = [inputs] + [a + 0.3 * torch.randn_like(a) for a in state.activities[1:]]
    if activation == "relu":  # states live in x >= 0 (the bounds are tested in test_solvers.py)
        x[1] = x[1].abs() + 0.01
    state.activities[:] = x
    free = [a.clone().requires_grad_() for a in x[1:]]
    written = energy.internal_energy([inputs, *free]) + 0.4 * 0.5 * (free[-1] - state.targets).pow(2).sum()
    expected = torch.autograd.grad(written, free, retain_graph=True)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(energy.activity_gradients(state), expected))
    weight_grads = torch.autograd.grad(written / 6, list(network.parameters()))
    flat = [g for layer in energy.parameter_gradients(state) for g in layer]
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(flat, weight_grads))


def test_hopfield_refuses_layers_without_a_hopfield_energy():
    """An activation inside a layer (or a stateful layer) has no Hopfield bilinear form."""
    for inner in (nn.ReLU(), nn.BatchNorm2d(2), nn.Dropout()):
        network = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), inner, nn.MaxPool2d(2), nn.ReLU()),
                                nn.Sequential(nn.Flatten(), nn.Linear(2, 3)))
        with pytest.raises(TypeError, match=f"layer 1 has a {type(inner).__name__} inside it"):
            HopfieldEnergy(network, Loss("mse"))


def test_equilibrium_gradient_matches_finite_differences():
    """The EP/CHL reference: dL/dtheta at the free equilibrium, against re-relaxed differences."""
    torch.manual_seed(3)
    network = mlp([4, 3, 2], activation="sigmoid")
    inputs, targets = torch.randn(2, 4), torch.randint(0, 2, (2,))
    algorithm = build_algorithm("ep", steps=5000, step_size=0.5, tol=1e-15)
    reference = algorithm.reference(network, inputs, targets, "mse")
    weight, h = network[1].weight, 1e-5

    def loss_at_equilibrium():
        return Loss("mse").value(algorithm.predict(network, inputs),
                                 Loss("mse").prepare_targets(targets, torch.zeros(2, 2)))

    with torch.no_grad():
        for i, j in [(0, 0), (1, 2)]:
            weight[i, j] += h
            up = loss_at_equilibrium()
            weight[i, j] -= 2 * h
            down = loss_at_equilibrium()
            weight[i, j] += h
            assert (up - down) / (2 * h) == pytest.approx(reference["1.weight"][i, j].item(), rel=1e-5)


# --- inference ---------------------------------------------------------------------------------
def test_trace_records_every_step_and_the_free_phase_has_zero_internal_energy(problem):
    network, inputs, targets = problem
    algorithm = build_algorithm("pc", solver="gd", steps=30, step_size=0.2, tol=None, trace=True)
    trace = algorithm.estimate(network, inputs, targets).trace
    assert trace.total.shape == trace.internal.shape == trace.supervised.shape == (31,)
    assert trace.internal[0] == 0  # Millidge et al. 2022 Fig. 2A: inference starts at the free phase
    assert torch.allclose(trace.total, trace.internal + trace.supervised)
    assert (trace.total[1:] <= trace.total[:-1] + 1e-15).all()  # gradient descent on E
    assert trace.supervised[-1] < trace.supervised[0] and trace.internal[-1] > 0


def test_cross_entropy_uses_the_last_axis_for_outputs_of_any_rank():
    torch.manual_seed(5)
    network = nn.Sequential(nn.Sequential(nn.Linear(5, 10), nn.Tanh()),
                            nn.Sequential(nn.Linear(10, 12), nn.Unflatten(1, (3, 4))))
    inputs = torch.randn(6, 5)
    targets = torch.softmax(torch.randn(6, 3, 4), dim=-1)
    reference = build_algorithm("bp").gradients(network, inputs, targets)
    assert max_relative(build_algorithm("z_il").gradients(network, inputs, targets), reference) <= 1e-10


def test_backprop_refuses_negative_class_indices(problem):
    network, inputs, targets = problem
    targets[0] = -100
    with pytest.raises(ValueError, match="class indices must lie in"):
        build_algorithm("bp").gradients(network, inputs, targets)


def test_frozen_parameters_get_no_gradient_from_any_algorithm(problem):
    network, inputs, targets = problem
    network[0][0].bias.requires_grad_(False)
    for name in ALGORITHMS:
        assert "0.0.bias" not in build_algorithm(name).gradients(network, inputs, targets)


def test_non_finite_inputs_are_refused(problem):
    network, inputs, targets = problem
    inputs[0, 0] = float("nan")
    for name in ALGORITHMS:
        with pytest.raises((ValueError, FloatingPointError), match="NaN or Inf"):
            build_algorithm(name).gradients(network, inputs, targets)


# --- the algorithm interface ---------------------------------------------------------------------
def test_registry_lists_every_algorithm_of_the_papers():
    # the papers' algorithms first (the order the CLI lists them), then any added in a file of its own
    assert ALGORITHMS[:7] == ("bp", "pc", "pc_nudge", "z_il", "fa_z_il", "ep", "chl")


def test_unknown_algorithm_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown algorithm 'pcn'; valid algorithms are: bp, pc, pc_nudge, z_il"):
        build_algorithm("pcn")


def test_unknown_hyperparameter_lists_the_valid_ones():
    with pytest.raises(TypeError, match=r"no hyper-parameter\(s\) beta; its hyper-parameters are: .*\blam\b"):
        build_algorithm("pc_nudge", beta=0.1)


def test_shape_mismatch_names_the_layer(problem):
    network, inputs, targets = problem
    for name in ("pc", "z_il", "fa_z_il"):
        with pytest.raises(ValueError, match=r"layer 1 \(.*Linear\(in_features=7.*input of shape \(3, 9\)"):
            build_algorithm(name).gradients(network, torch.randn(3, 9), targets)
    broken = nn.Sequential(nn.Linear(7, 6), nn.Linear(5, 4))
    with pytest.raises(ValueError, match="layer 2"):
        build_algorithm("pc").gradients(broken, inputs, targets)


def test_dtype_mismatch_is_explained(problem):
    network, inputs, targets = problem
    with pytest.raises(TypeError, match="inputs are torch.float32 but the network's parameters are torch.float64"):
        build_algorithm("pc").gradients(network, inputs.float(), targets)


def test_batch_mismatch_is_explained(problem):
    network, inputs, targets = problem
    with pytest.raises(ValueError, match="batch size 3 but targets 2"):
        build_algorithm("bp").gradients(network, inputs, targets[:2])


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_algorithm_returns_named_gradients_of_the_parameters(name, problem):
    network, inputs, targets = problem
    estimate = build_algorithm(name).estimate(network, inputs, targets, "mse")
    named = dict(network.named_parameters())
    assert estimate.gradients.keys() == named.keys()
    assert all(estimate.gradients[k].shape == p.shape for k, p in named.items())
    assert estimate.output.shape == (3, 4) and estimate.loss.dim() == 0
    assert all(torch.isfinite(g).all() for g in estimate.gradients.values())


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_algorithm_descends_the_loss(name, problem):
    """One small step along -estimate lowers the loss: each estimate is a descent direction."""
    network, inputs, targets = problem
    algorithm = build_algorithm(name)
    before = algorithm.estimate(network, inputs, targets).loss
    gradients = algorithm.gradients(network, inputs, targets)
    with torch.no_grad():
        for key, parameter in network.named_parameters():
            parameter -= 0.05 * gradients[key]
    assert algorithm.estimate(network, inputs, targets).loss < before


def test_pc_family_reference_is_backprop(problem):
    network, inputs, targets = problem
    bp = build_algorithm("bp").gradients(network, inputs, targets)
    assert max_relative(build_algorithm("pc_nudge").reference(network, inputs, targets), bp) == 0


def test_ep_predicts_with_its_free_equilibrium():
    torch.manual_seed(0)
    network = mlp([5, 4, 3], activation="sigmoid")
    inputs = torch.randn(2, 5)
    algorithm = build_algorithm("ep", steps=3000, tol=1e-14)
    output = algorithm.predict(network, inputs)
    energy, state, _ = algorithm.free_phase(network, inputs, None, Loss("mse"))
    assert torch.equal(output, state.output)
    assert max(g.abs().max() for g in energy.activity_gradients(state)) < 1e-6  # an equilibrium
    assert not torch.allclose(output, network(inputs), atol=1e-3)  # ... not the feedforward pass


def test_float32_and_float64_agree(problem):
    network, inputs, targets = problem
    g64 = build_algorithm("pc_nudge", lam=0.01).gradients(network, inputs, targets)
    g32 = build_algorithm("pc_nudge", lam=0.01).gradients(network.float(), inputs.float(), targets)
    assert all(g.dtype == torch.float32 for g in g32.values())
    assert relative_l2({k: v.double() for k, v in g32.items()}, g64) < 1e-5


def _spy_on_the_speed_path(monkeypatch) -> list:
    """The types ``FirstLayerInRowSpace.around`` returns from now on (None: not taken)."""
    from pl_energy.core import reduced_input

    around = reduced_input.FirstLayerInRowSpace.around.__func__
    used = []

    def spy(cls, *args):
        chosen = around(cls, *args)
        used.append(type(chosen))
        return chosen

    monkeypatch.setattr(reduced_input.FirstLayerInRowSpace, "around", classmethod(spy))
    return used


@pytest.mark.parametrize("sizes", [[30, 20, 12, 5], [30, 20, 5]])
@pytest.mark.parametrize("settings", [{}, {"centered": True}, {"gamma": 0.5, "lam": 1.0}])
def test_reduced_first_layer_runs_the_same_dynamics(settings, sizes, monkeypatch):
    """x_1 in the row space of W_2 (pl_energy/core/reduced_input.py) is a change of coordinates."""
    from pl_energy.core import reduced_input
    from pl_energy.core.reduced_input import ReducedFirstLayer

    torch.manual_seed(4)
    network = mlp(sizes)
    inputs, targets = torch.randn(16, 30), torch.randint(0, 5, (16,))
    algorithm = build_algorithm("pc_nudge", **{"lam": 0.01, **settings}, solver="gd", steps=60, tol=None, trace=True)
    used = _spy_on_the_speed_path(monkeypatch)
    estimate = algorithm.estimate(network, inputs, targets)
    reduced, reduced_trace = estimate.gradients, estimate.trace.total
    assert used and set(used) == {reduced_input.FirstLayerInRowSpace}
    monkeypatch.setattr(ReducedFirstLayer, "pays_off", staticmethod(lambda *args: False))
    used.clear()
    estimate = algorithm.estimate(network, inputs, targets)
    assert used and reduced_input.FirstLayerInRowSpace not in used
    assert relative_l2(reduced, estimate.gradients) < 1e-12
    assert torch.allclose(reduced_trace, estimate.trace.total, rtol=0, atol=1e-14)
    # the energy itself has no trace of the speed path: a state of it has no reduced slot
    state = PredictiveCodingEnergy(network, Loss("cross_entropy")).free_state(inputs, targets)
    assert not any("reduced" in name for name in vars(state))


def test_reduced_first_layer_without_a_trace_and_when_it_diverges(monkeypatch):
    """Unrecorded, the update is the plain one's; diverging, the error names the same step, and
    the state left behind is in plain coordinates."""
    from pl_energy import DivergenceError
    from pl_energy.core import reduced_input
    from pl_energy.core.reduced_input import ReducedFirstLayer

    torch.manual_seed(4)
    network = mlp([30, 20, 12, 5])
    inputs, targets = torch.randn(16, 30), torch.randint(0, 5, (16,))
    results = []
    used = _spy_on_the_speed_path(monkeypatch)
    for reduced in (True, False):
        if not reduced:
            assert used and set(used) == {reduced_input.FirstLayerInRowSpace}  # both runs took it
            monkeypatch.setattr(ReducedFirstLayer, "pays_off", staticmethod(lambda *args: False))
        quiet = build_algorithm("pc_nudge", lam=0.01, solver="gd", steps=60, tol=None, trace=False)
        gradients = quiet.estimate(network, inputs, targets).gradients
        energy = PredictiveCodingEnergy(network, Loss("cross_entropy"))
        state = energy.nudged(energy.free_state(inputs, targets), 1.0)
        with pytest.raises(DivergenceError) as error:
            relax(energy, state, 60, step_size=5.0, solver="gd")
        results.append((gradients, str(error.value), [a.clone() for a in state.activities]))
    (fast, fast_error, fast_state), (plain, plain_error, plain_state) = results
    assert relative_l2(fast, plain) < 1e-12
    assert fast_error == plain_error and "at step" in fast_error
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-6) for a, b in zip(fast_state, plain_state))


def test_reduction_is_used_only_when_it_saves_work():
    from pl_energy.core.reduced_input import ReducedFirstLayer

    assert ReducedFirstLayer.pays_off(64, 50, 128, 64)  # Millidge et al. 2022's net, batch 64
    assert not ReducedFirstLayer.pays_off(1, 50, 4096, 2048)  # Song et al. 2020's ImageNet net, batch 1
