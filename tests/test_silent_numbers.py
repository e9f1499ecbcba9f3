"""Inputs that used to give wrong numbers quietly: each now works correctly or fails in one line.

Oracles: backprop through autograd (``bp``) for exact algorithms, the algorithms' own
references, and the messages users read.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from pl_energy import build_algorithm
from helpers import eager_calls, max_relative


def tied_network() -> nn.Sequential:
    """Two hidden layers sharing one weight matrix (a tied, or recurrent-unrolled, layer)."""
    torch.manual_seed(0)
    first, second = nn.Linear(6, 6), nn.Linear(6, 6)
    second.weight = first.weight
    return nn.Sequential(nn.Sequential(first, nn.Tanh()), nn.Sequential(second, nn.Tanh()),
                         nn.Linear(6, 3)).double()


@pytest.mark.parametrize("name", ["z_il", "fa_z_il", "pc_nudge", "pc", "ep", "chl"])
def test_tied_weights_get_the_sum_over_their_uses(name):
    """Oracle: the same network with the two uses untied (two equal copies of the weight); the
    tied weight's gradient is the sum of the copies' (and BP's itself for the exact z_il)."""
    network = tied_network()
    untied = tied_network()
    untied[1][0].weight = nn.Parameter(untied[0][0].weight.detach().clone())
    inputs, targets = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    keys = {key for key, _ in network.named_parameters()}
    assert "1.0.weight" not in keys  # listed once, under its first use
    algorithm = build_algorithm(name, **({"tol": 1e-12} if name in ("pc", "pc_nudge", "ep", "chl") else {}))
    estimate = algorithm.gradients(network, inputs, targets)
    reference = algorithm.reference(network, inputs, targets)
    assert set(estimate) == set(reference) == keys
    separate = algorithm.gradients(untied, inputs, targets)
    separate_reference = algorithm.reference(untied, inputs, targets)
    for tied, copies in ((estimate, separate), (reference, separate_reference)):
        torch.testing.assert_close(tied["0.0.weight"], copies["0.0.weight"] + copies["1.0.weight"], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(tied["2.weight"], copies["2.weight"], rtol=1e-9, atol=1e-12)
    if name in ("z_il", "fa_z_il"):  # exact: the tied weight's update is BP's to rounding
        assert max_relative(estimate, build_algorithm("bp").gradients(network, inputs, targets)) <= 1e-10


# --- precision -----------------------------------------------------------------------------------
RELAXING = ["pc", "pc_nudge", "ep", "chl"]


def small_problem(dtype=torch.float32, activation="tanh", sizes=(8, 6, 4)):
    from pl_energy import mlp

    torch.manual_seed(0)
    network = mlp(list(sizes), activation=activation).to(dtype)
    return network, torch.rand(5, 8, dtype=dtype), torch.tensor([0, 1, 2, 3, 0])


@pytest.mark.parametrize("name", RELAXING)
def test_half_precision_parameters_are_refused_by_relaxing_algorithms(name):
    network, inputs, targets = small_problem(torch.bfloat16)
    with pytest.raises(TypeError, match=rf"{name} reads its update .*bfloat16.*measured 0\.\d+ on MNIST.*'32-true'"):
        build_algorithm(name).gradients(network, inputs, targets)


@pytest.mark.parametrize("name", ["bp", "z_il"])
def test_exact_algorithms_still_run_in_half_precision(name):
    network, inputs, targets = small_problem(torch.bfloat16)
    gradients = build_algorithm(name).gradients(network, inputs, targets)
    assert all(g.dtype == torch.bfloat16 for g in gradients.values())


@pytest.mark.parametrize("name", RELAXING)
def test_autocast_does_not_reach_inference(name):
    """Under bf16 autocast (Lightning's bf16-mixed) the estimate and the reference are those of
    float32; before, pc_nudge's cosine with BP fell to 0.54 there."""
    network, inputs, targets = small_problem(activation="clip" if name in ("ep", "chl") else "tanh")
    algorithm = build_algorithm(name)
    plain, reference = algorithm.gradients(network, inputs, targets), algorithm.reference(network, inputs, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = algorithm.gradients(network, inputs, targets)
        mixed_reference = algorithm.reference(network, inputs, targets)
    for key in plain:
        torch.testing.assert_close(mixed[key], plain[key], rtol=0, atol=0)
        torch.testing.assert_close(mixed_reference[key], reference[key], rtol=0, atol=0)


@pytest.mark.parametrize("name,settings", [("ep", {"beta": 1e-6}),
                                           ("pc_nudge", {"lam": 1e-6, "solver": "gd", "tol": None, "steps": 20}),
                                           ("chl", {"gamma": 1e-3})])
def test_a_nudge_below_the_dtypes_resolution_is_refused_unless_allowed(name, settings):
    from pl_energy import PrecisionWarning

    # three layers for CHL: its clamped displacement reaches layer 1 scaled by gamma^2
    network, inputs, targets = small_problem(activation="clip" if name in ("ep", "chl") else "tanh",
                                             sizes=(8, 6, 6, 4) if name == "chl" else (8, 6, 4))
    algorithm = build_algorithm(name, **settings)
    with pytest.raises(ValueError, match="machine epsilons of torch.float32.*float64.*allow_imprecise=True"):
        algorithm.gradients(network, inputs, targets)
    with pytest.warns(PrecisionWarning, match="machine epsilons of torch.float32.*float64"):
        build_algorithm(name, **settings, allow_imprecise=True).gradients(network, inputs, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        algorithm.gradients(network.double(), inputs.double(), targets)


# --- hyper-parameters ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,settings,message", [
    ("z_il", {"lam": float("nan")}, "z_il: lam must be float"),
    ("fa_z_il", {"lam": float("inf")}, "fa_z_il: lam must be float"),
    ("pc_nudge", {"lam": float("nan")}, "pc_nudge: lam must be float"),
    ("pc", {"centered": "no"}, "pc: centered must be bool"),
    ("ep", {"centered": 1}, "ep: centered must be bool"),
    ("ep", {"gamma": 2.0}, r"ep: gamma \(feedback strength\) must lie in \(0, 1\]"),
    ("chl", {"gamma": 0.0}, r"chl: gamma \(feedback strength\) must lie in \(0, 1\]"),
    ("ep", {"nudged_steps": 0}, "nudged_steps must be >= 1"),
    ("ep", {"beta": float("nan")}, "ep: beta must be float"),
    ("pc_nudge", {"step_size": float("inf")}, "step_size must be > 0 and finite"),
    ("pc_nudge", {"steps": 2.5}, "steps must be an integer >= 0"),
    ("pc", {"lam": True}, "pc: lam must be float"),
    ("z_il", {"inference_rate": "1"}, "z_il: inference_rate must be float"),
])
def test_bad_hyperparameters_are_refused_in_one_line(name, settings, message):
    with pytest.raises(ValueError, match=message):
        build_algorithm(name, **settings)


def test_zero_inference_steps_warn():
    with pytest.warns(UserWarning, match="steps=0 runs no inference.*updates are 0"):
        build_algorithm("pc_nudge", steps=0)


# --- batches -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int16])
@pytest.mark.parametrize("name", ["bp", "z_il", "pc_nudge", "ep"])
def test_integer_class_targets_of_any_dtype_work(name, dtype):
    network, inputs, targets = small_problem(activation="clip" if name == "ep" else "tanh")
    algorithm = build_algorithm(name)
    expected = algorithm.gradients(network, inputs, targets)
    got = algorithm.gradients(network, inputs, targets.to(dtype))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["bp", "z_il", "pc", "pc_nudge", "ep", "chl"])
def test_an_empty_batch_fails_in_one_line(name):
    network, inputs, targets = small_problem()
    with pytest.raises(ValueError, match="the batch is empty"):
        build_algorithm(name).gradients(network, inputs[:0], targets[:0])


@pytest.mark.parametrize("name", ["bp", "pc_nudge"])
def test_inference_mode_is_named(name):
    network, inputs, targets = small_problem()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside it .*torch.no_grad.. is fine"):
        build_algorithm(name).gradients(network, inputs, targets)


def test_float_class_targets_are_refused_also_by_bp():
    network, inputs, targets = small_problem()
    with pytest.raises(ValueError, match="class-index targets must be integers"):
        build_algorithm("bp").gradients(network, inputs, targets.float())


# --- layers --------------------------------------------------------------------------------------
def stateful_network(kind: str) -> nn.Sequential:
    torch.manual_seed(0)
    inner = nn.Dropout(0.3) if kind == "dropout" else nn.BatchNorm1d(6)
    return nn.Sequential(nn.Sequential(nn.Linear(8, 6), inner, nn.Tanh()), nn.Sequential(nn.Linear(6, 5), nn.Tanh()),
                         nn.Linear(5, 4)).double()


@pytest.mark.parametrize("kind", ["dropout", "batchnorm"])
def test_stateful_layers_keep_one_mask_and_one_set_of_statistics_per_batch(kind):
    """Oracle: BP through the network with the batch's mask and statistics held fixed, built here
    by hand. z_il is exact against it, converged pc_nudge close; before, pc_nudge was 77x (Dropout)
    and 71x (BatchNorm) off, and BatchNorm updated its running statistics steps + 1 times."""
    network = stateful_network(kind)
    inputs, targets = torch.rand(16, 8, dtype=torch.float64), torch.randint(0, 4, (16,))
    layer = network[0][1]
    for name, bound in (("z_il", 1e-10), ("pc_nudge", 0.05)):
        algorithm = build_algorithm(name, **({"tol": 1e-10, "steps": 500} if name == "pc_nudge" else {}))
        algorithm.allow_constant_batch_statistics = True  # what this test measures
        tracked = int(layer.num_batches_tracked) if kind == "batchnorm" else 0
        estimate = algorithm.gradients(network, inputs, targets)
        if kind == "batchnorm":
            assert int(layer.num_batches_tracked) == tracked + 1  # one training forward pass's worth
        reference = algorithm.reference(network, inputs, targets)  # the same batch: same mask and statistics
        if kind == "batchnorm":
            assert int(layer.num_batches_tracked) == tracked + 1
        fixed = algorithm._forwards[id(inputs)][1].layers[layer]
        with torch.enable_grad():
            hidden = network[0][0](inputs)
            if kind == "dropout":
                hidden = hidden * fixed.mask
            else:
                mean, var = hidden.mean(0).detach(), hidden.var(0, unbiased=False).detach()
                hidden = (hidden - mean) / torch.sqrt(var + layer.eps) * layer.weight + layer.bias
            output = network[2](network[1](torch.tanh(hidden)))
            loss = torch.nn.functional.cross_entropy(output, targets)
            by_hand = dict(zip([n for n, _ in network.named_parameters()],
                               torch.autograd.grad(loss, list(network.parameters()))))
        assert max_relative(reference, by_hand) <= 1e-12
        assert max_relative(estimate, reference) <= bound, name
    if kind == "dropout":
        assert 0 < float((fixed.mask == 0).double().mean()) < 1  # a real mask was drawn


def test_a_parameter_free_top_level_layer_warns():
    """A CNN written flat (each ReLU, pool and Flatten its own layer) relaxes those too."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    inputs, targets = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    with pytest.warns(UserWarning, match="layer 2 .ReLU. has no parameters.*group parameter-free modules"):
        build_algorithm("pc_nudge").gradients(network, inputs, targets)
    grouped = nn.Sequential(nn.Sequential(network[0], network[1], network[2]), network[3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_algorithm("pc_nudge").gradients(grouped, inputs, targets)


@pytest.mark.parametrize("name", ["bp", "z_il", "pc_nudge", "ep"])
def test_a_wrong_input_width_names_the_layer(name):
    network, inputs, targets = small_problem()
    with pytest.raises(ValueError, match=r"layer 1 \(Sequential.*Linear\(in_features=8.*cannot take an input of shape \(5, 7\)"):
        build_algorithm(name).gradients(network, inputs[:, :7], targets)


def test_batchnorm_running_statistics_move_as_in_one_training_forward_pass():
    import copy

    network = stateful_network("batchnorm")
    inputs, targets = torch.rand(16, 8, dtype=torch.float64), torch.randint(0, 4, (16,))
    own = copy.deepcopy(network[0][1])
    own(network[0][0](inputs).detach())  # torch's own training forward pass
    algorithm = build_algorithm("pc_nudge", tol=1e-8)
    algorithm.allow_constant_batch_statistics = True
    algorithm.gradients(network, inputs, targets)
    layer = network[0][1]
    torch.testing.assert_close(layer.running_mean, own.running_mean, rtol=0, atol=1e-15)
    torch.testing.assert_close(layer.running_var, own.running_var, rtol=0, atol=1e-15)
    assert int(layer.num_batches_tracked) == int(own.num_batches_tracked) == 1


def test_forward_semantics_nest_and_leave_the_layers_as_they_were():
    from pl_energy.core.forward_semantics import fixed_forward

    network = stateful_network("dropout")
    layer = network[0][1]
    x = torch.ones(64, 6, dtype=torch.float64)
    with fixed_forward(network):
        outer = layer(x)
        torch.testing.assert_close(layer(x), outer, rtol=0, atol=0)  # one mask per batch
        with fixed_forward(network):
            assert not torch.equal(layer(x), outer)  # the inner batch's own mask
        torch.testing.assert_close(layer(x), outer, rtol=0, atol=0)  # the outer batch's mask is back
    assert "forward" not in layer.__dict__  # then the class's own forward: a new mask per call
    assert not torch.equal(layer(x), layer(x))
    layer.eval()
    assert torch.equal(layer(x), x)


def test_a_compiled_layer_is_not_recompiled_for_every_batch_of_a_stateful_network():
    """The fixed forward of a BatchNorm stays one object across batches (``_Fixable``), so a
    compiled layer around it keeps its graphs; with a new object per batch every batch
    recompiled, and after torch's recompile limit the layers ran eagerly without a word.
    Counted: the Linear calls that ran outside a compiled graph."""
    from pl_energy.core.networks import compile_layers

    torch._dynamo.reset()  # the graphs other tests compiled count towards the recompile limit
    network = stateful_network("batchnorm")
    outside = eager_calls([network[0][0]])
    compile_layers(network, backend="aot_eager")
    algorithm = build_algorithm("z_il")
    algorithm.allow_constant_batch_statistics = True
    for seed in range(10):
        torch.manual_seed(seed)
        algorithm.gradients(network, torch.rand(16, 8, dtype=torch.float64), torch.randint(0, 4, (16,)))
    assert not outside


def test_the_mask_is_an_inverted_dropout_mask_of_rate_p():
    network = stateful_network("dropout")
    inputs, targets = torch.rand(256, 8, dtype=torch.float64), torch.randint(0, 4, (256,))
    algorithm = build_algorithm("z_il")
    algorithm.gradients(network, inputs, targets)
    mask = algorithm._forwards[id(inputs)][1].layers[network[0][1]].mask
    assert set(torch.unique(mask).tolist()) == {0.0, 1 / 0.7}
    assert float((mask == 0).double().mean()) == pytest.approx(0.3, abs=0.03)


def test_channel_dropout_is_refused_rather_than_masked_elementwise():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout2d(0.2), nn.ReLU(), nn.Flatten()),
                            nn.Linear(8, 3))
    with pytest.raises(TypeError, match="Dropout2d in training mode is not supported.*use nn.Dropout"):
        build_algorithm("pc_nudge").gradients(network, torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))


def test_a_reference_of_an_unseen_batch_leaves_the_running_statistics_alone():
    network = stateful_network("batchnorm")
    inputs, targets = torch.rand(16, 8, dtype=torch.float64), torch.randint(0, 4, (16,))
    before = network[0][1].running_mean.clone()
    build_algorithm("pc_nudge").reference(network, inputs, targets)
    assert torch.equal(network[0][1].running_mean, before) and int(network[0][1].num_batches_tracked) == 0


def test_hyperparameters_of_a_user_subclass_written_without_future_annotations(monkeypatch):
    import dataclasses as dc

    from pl_energy.algorithms.base import Algorithm
    from pl_energy.algorithms.validation import check_hyperparameter_types

    # the class registers itself: into a copy of the registry, which the later tests do not see
    monkeypatch.setattr(Algorithm, "registered", dict(Algorithm.registered))
    namespace = {}
    exec("import dataclasses\nfrom pl_energy.algorithms.base import Algorithm\n"
         "@dataclasses.dataclass\nclass Mine(Algorithm):\n    x: float = 0.5\n    k: int = 3\n"
         "    name = 'mine'\n", namespace)
    check_hyperparameter_types(namespace["Mine"]())
    with pytest.raises(ValueError, match="mine: x must be float"):
        namespace["Mine"](x=float("nan"))
    assert dc.is_dataclass(namespace["Mine"])


def test_batchnorm_in_training_mode_is_refused_and_named_for_what_the_update_leaves_out():
    """The update holds the batch statistics constant: it is not bp's update, and its agreement
    with its own reference cannot show that (a BatchNorm ResNet: z_il 37 % after an epoch, bp 98 %).
    Refused by default in one line naming the opt-in; with it, warned about."""
    from pl_energy.algorithms import BatchStatisticsWarning
    from pl_energy.errors import RefusedValue

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Tanh()),
                                  torch.nn.Linear(5, 3)).double()
    x, y = torch.rand(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    for name in ("z_il", "pc_nudge", "pc", "ep"):
        with pytest.raises(RefusedValue, match=rf"^{name} with BatchNorm in training mode \(0\.1\).*"
                                               r"allow_constant_batch_statistics=True") as refused:
            build_algorithm(name).estimate(network, x, y)
        assert "\n" not in str(refused.value)
    accepting = build_algorithm("z_il")
    accepting.allow_constant_batch_statistics = True
    with pytest.warns(BatchStatisticsWarning, match="statistics held constant"):
        accepting.estimate(network, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchStatisticsWarning)
        build_algorithm("bp").estimate(network, x, y)  # autograd's own forward: through the statistics
        network.eval()
        build_algorithm("z_il").estimate(network, x, y)  # eval mode: running statistics, a fixed map


class _SkipAround(nn.Sequential):
    """A Sequential whose forward adds a skip around its children: another function than them."""

    def forward(self, x):
        return x + super().forward(x)


def test_a_sequential_whose_forward_is_its_own_is_never_computed_as_its_children():
    """bp computes the network's forward (its error stays its error, not a child chain's
    gradients); the energy algorithms, which compute the children one after another, refuse it."""
    torch.manual_seed(0)
    broken = _SkipAround(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))  # 6 + 3: forward raises
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    with pytest.raises(RuntimeError):
        build_algorithm("bp").estimate(broken, x, y)
    square = _SkipAround(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
    with pytest.raises(TypeError, match="overrides nn.Sequential.forward"):
        build_algorithm("pc_nudge").estimate(square, x, y)


@pytest.mark.parametrize("name", ["bp", "pc_nudge"])
def test_class_index_targets_are_checked_alike_by_every_algorithm(name):
    """One check of class indices for all (``losses.class_indices``): booleans and indices out
    of range are refused in one line, by backprop too."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Sequential(nn.Linear(6, 5), nn.ReLU()), nn.Linear(5, 3))
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="must be integers"):
        build_algorithm(name).estimate(network, x, torch.tensor([True, False, True, False]))
    for bad in (torch.tensor([0, 1, 3, 0]), torch.tensor([0, 1, -100, 0]),
                torch.tensor([0, 1, torch.iinfo(torch.int64).min, 0])):
        with pytest.raises(ValueError, match=r"class indices must lie in \[0, 3\)"):
            build_algorithm(name).estimate(network, x, bad)
