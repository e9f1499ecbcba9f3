"""VGG and residual networks for every algorithm, at tiny sizes.

Oracles: autograd backprop (Z-IL and Fa-Z-IL equal it to rounding in float64; PC-Nudge approaches
it), each algorithm's own exact reference (EP, CHL), the muPC theory (activities of order one at
any depth), and ResNet-18's published parameter count (11.17M for CIFAR).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import pl_energy
from pl_energy.metrics import agreement_metrics
from pl_energy.core.network_spec import build_network, describe_network
from pl_energy.algorithms import NotConvergedWarning
from pl_energy.core.networks import VGG
from pl_energy.core.residual import ResidualMLP, ResNet, ScaledLinear
from helpers import eager_calls
from test_active_set import least_squares_slopes


def tiny_vgg(activation: str = "relu") -> nn.Sequential:
    return VGG(5, in_shape=(3, 16, 16), width=1 / 32, activation=activation).double()


def tiny_residual_mlp(parameterisation: str = "standard") -> nn.Sequential:
    return ResidualMLP(in_features=12, width=16, depth=6, num_classes=5, activation="tanh",
                       parameterisation=parameterisation).double()


def tiny_resnet() -> nn.Sequential:
    return ResNet(in_shape=(3, 8, 8), num_classes=5, widths=(4, 8), blocks=(1, 1), activation="tanh").double()


NETWORKS = {"vgg": (tiny_vgg, (3, 16, 16), 10), "residual_mlp": (tiny_residual_mlp, (12,), 5),
            "mupc_mlp": (lambda: tiny_residual_mlp("mupc"), (12,), 5), "resnet": (tiny_resnet, (3, 8, 8), 5)}


def batch(shape, classes, size: int = 6):
    torch.manual_seed(1)
    return torch.rand(size, *shape, dtype=torch.float64), torch.randint(0, classes, (size,))


def cosine(estimate, reference) -> float:
    return agreement_metrics(torch.cat([estimate[k].flatten() for k in reference]),
                             torch.cat([g.flatten() for g in reference.values()]))["cosine"]


def test_builders_have_the_published_shapes():
    assert len(VGG(5)) == 5 and len(VGG(7)) == 7 and len(VGG(9)) == 9
    assert [m.out_channels for m in VGG(5).modules() if isinstance(m, nn.Conv2d)] == [128, 256, 512, 512]
    resnet = ResNet()
    assert len(resnet) == 10 and sum(p.numel() for p in resnet.parameters()) == 11_173_962  # ResNet-18, CIFAR
    assert ResNet()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert len(ResidualMLP(depth=20)) == 20
    for network in (VGG(7, width=0.1), ResidualMLP(depth=4, parameterisation="mupc"), tiny_resnet()):
        rebuilt = build_network(describe_network(network))  # checkpoints rebuild them
        assert repr(rebuilt) == repr(network)
    with pytest.raises(ValueError, match="VGG depth 6"):
        VGG(6)
    with pytest.raises(ValueError, match="unknown parameterisation"):
        ResidualMLP(parameterisation="ntk")


def _last_hidden_norm(network, x) -> float:
    activity = x
    for layer in list(network)[:-1]:
        activity = layer(activity)
    return float(activity.detach().pow(2).mean().sqrt())


def test_mupc_keeps_the_activities_of_order_one_at_any_depth():
    """Innocenti et al. 2025: under muPC the forward pass is stable in depth and width; the
    standard parameterisation's residual stream grows with depth."""
    torch.manual_seed(0)
    x = torch.randn(256, 64)
    ratios = {}
    for parameterisation in ("mupc", "standard"):
        norms = [_last_hidden_norm(ResidualMLP(64, width, depth, 10, "relu", parameterisation), x)
                 for width, depth in ((64, 8), (64, 64), (256, 64))]
        ratios[parameterisation] = max(norms) / min(norms)
        if parameterisation == "mupc":
            assert all(0.3 < n < 3 for n in norms), norms
    assert ratios["mupc"] < 2 < ratios["standard"], ratios


@pytest.mark.parametrize("kind", sorted(NETWORKS))
@pytest.mark.parametrize("name", ["z_il", "fa_z_il"])
def test_z_il_is_backprop_on_vgg_and_residual_stacks(kind, name):
    make, shape, classes = NETWORKS[kind]
    network = make()
    x, y = batch(shape, classes)
    algorithm = pl_energy.build_algorithm(name)
    algorithm.allow_constant_batch_statistics = True  # the ResNet's BatchNorm: exact against its constant-statistics reference
    estimate = algorithm.gradients(network, x, y)
    reference = algorithm.reference(network, x, y)
    for key, exact in reference.items():
        torch.testing.assert_close(estimate[key], exact, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_pc_nudge_and_pc_approach_backprop_on_vgg_and_residual_stacks(kind):
    make, shape, classes = NETWORKS[kind]
    network = make()
    x, y = batch(shape, classes)
    # the reference is backprop through the same function: with BatchNorm (the ResNet), the
    # batch statistics inference holds fixed are constants (core.forward_semantics)
    nudge = pl_energy.build_algorithm("pc_nudge", lam=1e-3, centered=True, tol=1e-8, steps=500)
    weak_feedback = pl_energy.build_algorithm("pc", gamma=0.1, tol=1e-8, steps=500)
    nudge.allow_constant_batch_statistics = weak_feedback.allow_constant_batch_statistics = True
    assert cosine(nudge.gradients(network, x, y), nudge.reference(network, x, y)) > 0.999
    assert cosine(weak_feedback.gradients(network, x, y), weak_feedback.reference(network, x, y)) > 0.9


#: A piece within this fraction of max_l ||e_l|| of its unit's maximum is at the maximum (a kink;
#: the active set solves its kinks to tol = 1e-8 of it).
ON_KINK = 1e-7


def relu_max_pool_pieces(block: nn.Sequential, inputs: torch.Tensor) -> torch.Tensor:
    """A VGG block's units relu(maxpool_2x2(z))_u = max(0, z_u1, .., z_u4), z = conv(x), z_u1..4 the
    entries of u's window: their pieces (0, z_u1, .., z_u4) along the last dim, (B, C, H/2, W/2, 5)."""
    z = block[0](inputs)
    b, c, h, w = z.shape
    windows = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h // 2, w // 2, 4)
    return torch.cat([torch.zeros_like(windows[..., :1]), windows], -1)


def vgg_pc_energy(layers, inputs, hidden, targets, lam, routes=None) -> torch.Tensor:
    """E = sum_l 1/2 ||x_l - layer_l(x_{l-1})||^2 + lam CE(layer_L(x_{L-1}), y, sum), x_0 = inputs.
    With ``routes`` (per block, weights w over each unit's pieces v) a unit keeps its value max_k v_k
    and has the gradient sum_k w_k grad v_k: one-hot on its largest piece, autograd's derivative;
    a convex combination of the pieces at its maximum, a point of its Clarke gradient."""
    x = [inputs, *hidden]
    energy = lam * torch.nn.functional.cross_entropy(layers[-1](x[-1]), targets, reduction="sum")
    for l, block in enumerate(layers[:-1], 1):
        if routes is None:
            unit = block(x[l - 1])
        else:
            v = relu_max_pool_pieces(block, x[l - 1])
            unit = v.detach().amax(-1) + (routes[l - 1] * (v - v.detach())).sum(-1)
        energy = energy + 0.5 * (x[l] - unit).pow(2).sum()
    return energy


def clarke_fit(network, inputs, targets, lam, activities) -> dict:
    """Clarke stationarity of ``vgg_pc_energy`` at the hidden activities: g(w) = dE/dx is affine in
    the routes w = w0 + sum_k t_k d_k, w0 one-hot on each unit's largest piece, d_k moving weight from
    it to a piece k within ON_KINK of the maximum. t minimises ||g(w0) + sum_k t_k (g(w0 + d_k) - g(w0))||
    (least squares); w is in the Clarke set iff t >= 0 and each unit's sum t <= 1. Returns ||g(w0)||,
    ||g(w)|| (autograd at the fitted w), t, the kinks (block, sample, channel, row, column, piece),
    w, and the scale max_l ||e_l||."""
    layers = list(network.children())
    assert all([type(m) for m in block] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU] and block[1].kernel_size == 2
               and block[1].stride == 2 for block in layers[:-1])
    hidden = [a.detach() for a in activities[1:]]
    x = [inputs, *hidden]
    with torch.no_grad():
        pieces = [relu_max_pool_pieces(block, x[l]) for l, block in enumerate(layers[:-1])]
        scale = max(float((x[l + 1] - layers[l](x[l])).norm()) for l in range(len(layers) - 1))
    top = [v.argmax(-1, keepdim=True) for v in pieces]
    base_routes = [torch.zeros_like(v).scatter_(-1, t, 1.0) for v, t in zip(pieces, top)]

    def gradient(routes):
        free = [a.clone().requires_grad_(True) for a in hidden]
        energy = vgg_pc_energy(layers, inputs, free, targets, lam, routes)
        return torch.cat([g.flatten() for g in torch.autograd.grad(energy, free)])

    base = gradient(base_routes)
    torch.testing.assert_close(base, gradient(None), rtol=0, atol=1e-12 * scale)  # w0: the network's own
    kinks = [(l, *unit) for l, (v, t) in enumerate(zip(pieces, top))
             for unit in ((v.gather(-1, t) - v <= ON_KINK * scale) & (torch.arange(5) != t)).nonzero().tolist()]
    moves = []
    for l, b, c, i, j, k in kinks:
        move = [torch.zeros_like(r) for r in base_routes]
        move[l][b, c, i, j, k], move[l][b, c, i, j, top[l][b, c, i, j, 0]] = 1.0, -1.0
        moves.append(move)
    slopes, _ = least_squares_slopes(base, [gradient([r + d for r, d in zip(base_routes, move)]) - base
                                            for move in moves])
    routes = [r + sum(float(t) * move[l] for t, move in zip(slopes, moves)) for l, r in enumerate(base_routes)]
    return dict(base=float(base.norm()), residual=float(gradient(routes).norm()), slopes=slopes, kinks=kinks,
                routes=routes, scale=scale)


def test_a_smooth_vgg_converges_where_max_pooling_settles():
    """pc_nudge's default solver on VGG-5: with tanh and average pooling the energy is smooth and
    inference converges in a few steps to a state where autograd's dE/dx vanishes; with ReLU and
    max-pooling some switches sit on a tie at the nudged equilibrium: descent alone can only
    settle, and the active set (``core.active_set``) solves the tie; its state meets the KKT
    conditions written here (``clarke_fit``), descent's does not."""
    x, y = batch((3, 16, 16), 10, size=32)
    torch.manual_seed(2)
    smooth = VGG(5, in_shape=(3, 16, 16), width=1 / 16, activation="tanh", pool="avg").double()
    assert smooth.init_args["pool"] == "avg" and not any(isinstance(m, nn.MaxPool2d) for m in smooth.modules())
    algorithm = pl_energy.build_algorithm("pc_nudge", lam=0.01, tol=1e-8)
    energy = algorithm.energy(smooth, pl_energy.core.Loss("cross_entropy"))
    state = energy.nudged(energy.free_state(x, y), algorithm.lam)
    report = pl_energy.core.relax(energy, state, 100, tol=1e-8, solver="error").report
    assert report.converged and report.steps <= 4
    # the optimality condition, by autograd on the energy written here from its definition
    layers = list(smooth.children())
    free = [a.detach().clone().requires_grad_(True) for a in state.activities[1:]]
    inputs = [x, *free]
    internal = sum(0.5 * (inputs[l] - layers[l - 1](inputs[l - 1])).pow(2).sum() for l in range(1, len(layers)))
    total = internal + algorithm.lam * torch.nn.functional.cross_entropy(layers[-1](inputs[-1]), y, reduction="sum")
    for gradient, activity in zip(torch.autograd.grad(total, free), free):
        assert float(gradient.norm() / activity.detach().norm()) < 1e-6
    torch.manual_seed(2)
    kinked = VGG(5, in_shape=(3, 16, 16), width=1 / 16).double()
    descent = pl_energy.build_algorithm("pc_nudge", lam=0.01, tol=1e-8, active_set=False)
    with pytest.warns(NotConvergedWarning):
        (kinked_report,) = descent.estimate(kinked, x, y).inference
    assert kinked_report.settled and not kinked_report.converged
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotConvergedWarning)
        estimate = algorithm.estimate(kinked, x, y)
    (solved,) = estimate.inference
    assert solved.converged and solved.units_on_kink >= 1
    # the oracle: the solved state is an equilibrium of E with kinks (``clarke_fit``); its slopes
    # are needed (autograd's alone leave a residual), and the first block, whose slopes dE/dx
    # does not fix (x_0 is clamped), has no unit on a kink
    phase = algorithm.phases(kinked, x, y, pl_energy.core.Loss("cross_entropy"), False)
    assert phase.reports == (solved,)  # the estimate's phase
    fit = clarke_fit(kinked, x, y, algorithm.lam, phase.high.state.activities)
    assert fit["residual"] <= 1e-7 * fit["scale"] and fit["base"] >= 1e-3 * fit["scale"]
    assert len(fit["kinks"]) == solved.units_on_kink and all(block > 0 for block, *_ in fit["kinks"])
    assert bool((fit["slopes"] >= -1e-6).all()), fit["slopes"]
    for unit in {kink[:5] for kink in fit["kinks"]}:  # the largest piece keeps 1 - sum t >= 0
        assert sum(float(t) for t, kink in zip(fit["slopes"], fit["kinks"]) if kink[:5] == unit) <= 1 + 1e-6
    # the update is (1/lam) dE/dtheta with these slopes (the library's energy: batch means)
    layers, named = list(kinked.children()), dict(kinked.named_parameters())
    energy = vgg_pc_energy(layers, x, phase.high.state.activities[1:], y, algorithm.lam, fit["routes"])
    for name, gradient in zip(named, torch.autograd.grad(energy, list(named.values()))):
        expected = gradient / (algorithm.lam * len(x))
        assert float((estimate.gradients[name] - expected).norm()) <= 1e-8 * float(expected.norm()), name
    # not vacuous: descent's settled state fails it
    with pytest.warns(NotConvergedWarning):
        settled = descent.phases(kinked, x, y, pl_energy.core.Loss("cross_entropy"), False)
    assert clarke_fit(kinked, x, y, descent.lam, settled.high.state.activities)["residual"] >= 1e-4 * fit["scale"]


@pytest.mark.parametrize("name", ["ep", "chl"])
def test_ep_and_chl_train_a_vgg_stack_of_clip_units(name):
    network = tiny_vgg("clip")
    x, y = batch((3, 16, 16), 10)
    algorithm = pl_energy.build_algorithm(name, **({"beta": 0.01} if name == "ep" else {"gamma": 0.05}))
    estimate = algorithm.estimate(network, x, y)
    assert all(report.converged or report.settled for report in estimate.inference)
    assert cosine(estimate.gradients, algorithm.reference(network, x, y)) > 0.9


@pytest.mark.parametrize("name", ["ep", "chl"])
def test_a_residual_block_in_a_hopfield_energy_is_refused_by_name(name):
    x, y = batch((12,), 5)
    with pytest.raises(TypeError, match="has a (ScaledLinear|Tanh) inside it"):
        pl_energy.build_algorithm(name).estimate(tiny_residual_mlp(), x, y)


class DoubledLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


def test_a_linear_subclass_with_its_own_forward_gets_no_closed_form():
    """Before, ``isinstance(layer, nn.Linear)`` gave it nn.Linear's closed-form Jacobians: Z-IL's
    update was half BP's in silence."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Sequential(DoubledLinear(12, 8), nn.Tanh()), DoubledLinear(8, 5)).double()
    x, y = batch((12,), 5)
    algorithm = pl_energy.build_algorithm("z_il")
    for key, exact in algorithm.reference(network, x, y).items():
        torch.testing.assert_close(algorithm.gradients(network, x, y)[key], exact, rtol=0, atol=1e-10)
    clip = nn.Sequential(nn.Sequential(DoubledLinear(12, 8), pl_energy.core.activations.Clip()), nn.Linear(8, 5))
    with pytest.raises(TypeError, match="DoubledLinear inside it"):
        pl_energy.build_algorithm("ep").estimate(clip.double(), x, y)


def test_scaled_linear_computes_its_scale():
    layer = ScaledLinear(3, 2, scale=0.5, unit_init=True)
    x = torch.rand(4, 3)
    torch.testing.assert_close(layer(x), 0.5 * nn.functional.linear(x, layer.weight, layer.bias))
    assert layer.bias.abs().max() == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["z_il", "pc_nudge"])
def test_cuda_computes_what_the_cpu_computes(name):
    network = tiny_vgg()
    x, y = batch((3, 16, 16), 10)
    algorithm = pl_energy.build_algorithm(name)
    on_cpu = algorithm.gradients(network, x, y)
    on_gpu = algorithm.gradients(network.cuda(), x.cuda(), y.cuda())
    for key, value in on_cpu.items():
        torch.testing.assert_close(on_gpu[key].cpu(), value, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["z_il", "pc_nudge", "ep"])
def test_compiled_layers_give_the_same_updates_and_checkpoint_keys(name):
    """``EnergyModule(compile=...)`` compiles each layer in place. The backend here is
    ``aot_eager``: AOTAutograd, as inductor uses it (where buffer donation forbids the several
    VJPs that the linearisations take of one recorded forward pass), without inductor's code
    generation, whose speed a GPU benchmark measures."""
    import copy

    from pl_energy import EnergyModule

    network = tiny_vgg("clip" if name == "ep" else "relu")
    plain = copy.deepcopy(network)
    module = EnergyModule(network=network, algorithm=name, compile={"backend": "aot_eager"})
    assert list(module.network.state_dict()) == list(plain.state_dict())
    x, y = batch((3, 16, 16), 10)
    compiled = module.algorithm.gradients(module.network, x, y)
    for key, value in pl_energy.build_algorithm(name).gradients(plain, x, y).items():
        torch.testing.assert_close(compiled[key], value, rtol=0, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["z_il", "pc_nudge"])
def test_inductor_on_cuda_computes_what_eager_computes(name):
    """Inductor's generated kernels (what ``compile=True`` runs on a GPU) against the eager
    layers, in float64: fused kernels may sum in another order, nothing more."""
    import copy

    from pl_energy.core.networks import compile_layers

    network = tiny_vgg().cuda()
    plain = copy.deepcopy(network)
    compile_layers(network)
    x, y = (t.cuda() for t in batch((3, 16, 16), 10))
    compiled = pl_energy.build_algorithm(name).gradients(network, x, y)
    for key, value in pl_energy.build_algorithm(name).gradients(plain, x, y).items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-9, atol=1e-11)


def test_compiled_layers_stay_compiled_under_every_algorithm():
    """Layers of one class share the code of its forward, and torch keeps a limited number of
    graphs for it (8 by default) before it runs the rest eagerly with a log line only: VGG-5's
    five layers under bp, z_il, fa_z_il, pc and pc_nudge need more. ``compile_layers`` raises the
    limit; counted here: the convolutions that ran outside a compiled graph."""
    from pl_energy.core.networks import compile_layers

    torch._dynamo.reset()
    network = tiny_vgg()
    outside = eager_calls([module for module in network.modules() if isinstance(module, nn.Conv2d)])
    compile_layers(network, backend="aot_eager")
    for name in ("bp", "z_il", "fa_z_il", "pc", "pc_nudge"):
        for size in (6, 4):
            pl_energy.build_algorithm(name).gradients(network, *batch((3, 16, 16), 10, size))
    assert not outside


def test_a_pickled_module_compiles_its_layers_again_in_setup():
    """``ddp_spawn`` pickles the module into its workers, which drops the layers' compilation;
    ``EnergyModule.setup`` compiles them again."""
    import pickle

    from pl_energy import EnergyModule

    module = EnergyModule(network=tiny_vgg(), algorithm="pc_nudge", compile={"backend": "aot_eager"})
    compiled = lambda m: [getattr(layer, "_compiled_call_impl", None) is not None for layer in m.network.children()]
    assert all(compiled(module))
    copy = pickle.loads(pickle.dumps(module))
    assert not any(compiled(copy))
    copy.setup("fit")
    assert all(compiled(copy))
    plain = EnergyModule(network=tiny_vgg(), algorithm="pc_nudge")
    plain.setup("fit")
    assert not any(compiled(plain))
