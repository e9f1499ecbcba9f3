"""The benchmarks' units (gelu, silu, leaky_relu, softplus): closed forms against finite differences
and autograd, every builder, the PC family against backprop, and the Hopfield energy's refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pl_energy
from pl_energy.core.activations import ACTIVATIONS, derivatives_of, make_activation
from pl_energy.core.linearization import AutogradLinearization, LayerLinearizer
from pl_energy.core.network_spec import build_network, describe_network
from pl_energy.core.networks import VGG, ConvNet, mlp
from pl_energy.core.residual import Residual, ResidualMLP, ResNet, ScaledLinear
from helpers import max_relative, relative_l2

NEW_UNITS = ("gelu", "silu", "leaky_relu", "softplus")

#: The new units with torch's defaults and with other settings, which the closed forms must follow.
MODULES = [nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.LeakyReLU(), nn.LeakyReLU(0.3),
           nn.Softplus(), nn.Softplus(beta=2.0, threshold=3.0)]


pytestmark = pytest.mark.usefixtures("float64")


@pytest.mark.parametrize("unit", MODULES, ids=repr)
def test_closed_form_derivatives_match_central_differences_of_the_module(unit):
    """f'(x) against (f(x + h) - f(x - h)) / 2h of the module's own forward (no backward kernel)."""
    torch.manual_seed(0)
    pre = torch.randn(2000) * 4
    pre = pre[pre.abs() > 1e-3]  # off leaky_relu's kink and softplus's threshold switch
    if isinstance(unit, nn.Softplus):
        pre = pre[(pre * unit.beta - unit.threshold).abs() > 1e-3]
    step = 1e-6
    expected = (unit(pre + step) - unit(pre - step)) / (2 * step)
    derivatives = derivatives_of(unit)
    post = unit(pre)
    torch.testing.assert_close(derivatives.derivative(pre, post), expected, rtol=0, atol=1e-8)
    cotangent = torch.randn_like(pre)
    torch.testing.assert_close(derivatives.backward(cotangent, pre, post), cotangent * expected, rtol=0,
                               atol=1e-7)


def test_settings_change_the_closed_form_and_unknown_ones_fall_back_to_autograd():
    pre = torch.tensor([-2.0, 1.0])
    assert derivatives_of(nn.LeakyReLU(0.3)).derivative(pre, pre)[0] == 0.3
    assert derivatives_of(nn.LeakyReLU()).derivative(pre, pre)[0] == 0.01
    assert derivatives_of(nn.LeakyReLU(0.3)).derivative(torch.zeros(1), torch.zeros(1)) == 0.3  # the kink
    steep = derivatives_of(nn.Softplus(beta=5.0)).derivative(pre, pre)
    torch.testing.assert_close(steep, torch.sigmoid(5.0 * pre))
    odd = nn.GELU()
    odd.approximate = "cubic"  # a setting without a closed form here
    assert derivatives_of(odd) is None
    # in place, the unit overwrites the pre-activation its derivative reads: autograd instead
    for unit in (nn.SiLU(inplace=True), nn.LeakyReLU(inplace=True), nn.Hardsigmoid(inplace=True)):
        assert derivatives_of(unit) is None
        layer = nn.Sequential(nn.Linear(6, 4), unit)
        assert isinstance(LayerLinearizer(layer)(torch.randn(3, 6)), AutogradLinearization)
    assert derivatives_of(nn.ReLU(inplace=True)) is not None  # its derivative reads the output's side


def _layers():
    layers = []
    for unit in MODULES:
        layers.append((nn.Sequential(nn.Linear(6, 4), unit), "DenseLinearization"))
        layers.append((nn.Sequential(unit, ScaledLinear(6, 6, scale=0.3)), "ScaledLinearization"))
        layers.append((Residual(nn.Sequential(unit, ScaledLinear(6, 6, scale=0.1, unit_init=True))),
                       "ScaledLinearization"))
    return layers


@pytest.mark.parametrize("layer, kind", _layers(), ids=lambda v: v if isinstance(v, str) else " ".join(repr(v).split()))
def test_closed_form_layers_match_autograd(layer, kind):
    torch.manual_seed(1)
    layer, x = layer.double(), torch.randn(5, 6) * 2
    fast = LayerLinearizer(layer)(x)
    assert type(fast).__name__ == kind
    slow = AutogradLinearization(layer, x, needs_input_vjp=True)
    cotangent = torch.randn_like(slow.output)
    torch.testing.assert_close(fast.output, slow.output, rtol=0, atol=1e-14)
    torch.testing.assert_close(fast.input_vjp(cotangent), slow.input_vjp(cotangent), rtol=0, atol=1e-13)
    for a, b in zip(fast.parameter_vjp(cotangent), slow.parameter_vjp(cotangent)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", NEW_UNITS)
def test_every_builder_builds_with_each_unit(name):
    unit = ACTIVATIONS[name]
    assert type(make_activation(name)) is unit
    builders = [(mlp([12, 8, 5], activation=name), (12,)),
                (ConvNet(in_shape=(3, 8, 8), channels=(4, 4), num_classes=5, hidden=(6,), activation=name), (3, 8, 8)),
                (VGG(5, in_shape=(3, 16, 16), width=1 / 32, num_classes=5, activation=name), (3, 16, 16)),
                (ResNet(in_shape=(3, 8, 8), num_classes=5, widths=(4,), blocks=(1,), activation=name), (3, 8, 8)),
                (ResidualMLP(12, width=8, depth=4, num_classes=5, activation=name), (12,))]
    for network, shape in builders:
        assert any(type(m) is unit for m in network.modules()), type(network).__name__
        assert network(torch.randn(2, *shape)).shape == (2, 5)
        assert repr(build_network(describe_network(network))) == repr(network)  # checkpoints rebuild it


def _gelu_networks():
    torch.manual_seed(0)
    dense = (mlp([10, 8, 7, 4], activation="gelu"), torch.randn(6, 10))
    conv = (ConvNet(in_shape=(2, 8, 8), channels=(3, 4), num_classes=4, hidden=(6,), activation="gelu"),
            torch.rand(6, 2, 8, 8))
    return {"mlp": dense, "convnet": conv}


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_z_il_is_backprop_and_pc_nudge_approaches_it_on_gelu_networks(kind):
    network, x = _gelu_networks()[kind]
    y = torch.randint(0, 4, (x.shape[0],))
    backprop = pl_energy.build_algorithm("bp").gradients(network, x, y)
    z_il = pl_energy.build_algorithm("z_il").gradients(network, x, y)
    assert max_relative(z_il, backprop) < 1e-12
    nudge = pl_energy.build_algorithm("pc_nudge", lam=1e-4, centered=True, tol=1e-10, steps=500)
    assert relative_l2(nudge.gradients(network, x, y), backprop) < 1e-6


def test_the_dense_path_takes_the_new_units():
    network = mlp([10, 8, 7, 4], activation="silu")
    assert all(LayerLinearizer(layer).parts is not None for layer in network)


@pytest.mark.parametrize("name", ["ep", "chl"])
@pytest.mark.parametrize("unit", ["gelu", "silu"])
def test_non_monotone_units_are_refused_by_the_hopfield_energy(name, unit):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=f"layer 1's {type(make_activation(unit)).__name__} is not monotone"):
        pl_energy.build_algorithm(name).gradients(mlp([6, 5, 3], activation=unit), torch.randn(4, 6),
                                                  torch.randint(0, 3, (4,)))


@pytest.mark.parametrize("name", ["gelu", "silu", "leaky_relu", "softplus", "tanh", "sigmoid"])
def test_only_the_refused_units_give_a_driven_unit_a_second_minimum(name):
    """The reason for the refusal, on a grid: a unit's own energy 1/2 x^2 - h rho(x) for drives h
    up to 30 has one local minimum for the monotone units, two for GELU and SiLU."""
    x = torch.linspace(-8, 40, 480_001)
    unit = make_activation(name)
    counts = []
    for h in (-30.0, -5.0, 5.0, 12.0, 30.0):
        energy = 0.5 * x * x - h * unit(x)
        counts.append(int(((energy[1:-1] < energy[:-2]) & (energy[1:-1] < energy[2:])).sum()))
    assert max(counts) == (2 if name in ("gelu", "silu") else 1), counts


def test_a_hopfield_unit_applied_in_place_is_refused():
    network = nn.Sequential(nn.Sequential(nn.Linear(6, 5), nn.LeakyReLU(inplace=True)), nn.Linear(5, 3))
    with pytest.raises(ValueError, match="would overwrite the states"):
        pl_energy.build_algorithm("ep").gradients(network, torch.randn(4, 6), torch.randint(0, 3, (4,)))


def test_a_hopfield_layer_ending_in_an_activation_it_has_no_derivative_for_names_the_ones_it_takes():
    """``nn.Hardtanh(0, 1)`` at a layer's end is refused: the message lists the activations a
    Hopfield layer may end in (it said only "one activation at its end", which this is)."""
    network = nn.Sequential(nn.Sequential(nn.Linear(6, 5), nn.Hardtanh(0.0, 1.0)), nn.Linear(5, 3))
    with pytest.raises(TypeError, match=r"layer 1 has a Hardtanh inside it: .*the activation one of .*Clip"):
        pl_energy.build_algorithm("ep").gradients(network, torch.randn(4, 6), torch.randint(0, 3, (4,)))


@pytest.mark.parametrize("unit", ["leaky_relu", "softplus"])
def test_ep_with_monotone_new_units_approaches_its_exact_reference(unit):
    """Centered EP's error against implicit differentiation at the free equilibrium is O(beta^2).
    Unbounded units (as ReLU) give a Hopfield energy a minimum only while its couplings are weak:
    halved weights."""
    torch.manual_seed(0)
    network = mlp([6, 5, 4, 3], activation=unit)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(0.5)
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    algorithm = pl_energy.build_algorithm("ep", beta=1e-3, centered=True, tol=1e-12, steps=5000)
    estimate = algorithm.gradients(network, x, y)
    assert relative_l2(estimate, algorithm.reference(network, x, y)) < 1e-4
