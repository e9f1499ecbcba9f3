"""Units on a kink at the free state keep autograd's slope (``pl_energy.core.kinks``).

Oracles: PyTorch's own ReLU and max-pooling (value and autograd gradient at the free state, the
winner of a tie), and the equilibrium of a two-unit max-pooling energy written here from its
stationarity condition on autograd's piece.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from pl_energy import build_algorithm
from pl_energy.core import kinks
from pl_energy.core.kinks import kinks_pinned

POOLS = [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2, dilation=2), nn.MaxPool2d((2, 3), (1, 2))]


def _tied_images(seed: int = 0) -> torch.Tensor:
    """Random images with two constant patches: whole pooling windows tie, some at 0."""
    torch.manual_seed(seed)
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    x[:, :, :4, :4] = 0.5
    x[:, :, 5:, 6:] = 0.0
    return x


@pytest.mark.parametrize("pool", POOLS, ids=repr)
def test_at_the_free_state_pinned_layers_are_pytorchs(pool):
    """The first call (the free state) gives PyTorch's values and autograd's gradient, and counts
    the tied entries other than autograd's winner and the ReLU units at exactly 0."""
    x = _tied_images()
    plain = x.clone().requires_grad_()
    expected = torch.relu(pool(plain))
    expected.backward(torch.ones_like(expected))
    network = nn.Sequential(pool, nn.ReLU())
    with kinks_pinned(network) as pins:
        free = x.clone().requires_grad_()
        output = network(free)
        output.backward(torch.ones_like(output))
        pins.fix()
        later = x.clone().requires_grad_()
        again = network(later)
        again.backward(torch.ones_like(again))
        counts = dict(pins.on_kink)
    windows = nn.functional.unfold(nn.functional.pad(x.reshape(-1, 1, 9, 11), (pool.padding,) * 4 if isinstance(
        pool.padding, int) else (pool.padding[1],) * 2 + (pool.padding[0],) * 2, value=-float("inf")),
        pool.kernel_size, dilation=pool.dilation, stride=pool.stride)
    tied = (windows == windows.amax(1, keepdim=True)).sum(1)
    assert counts[pool] == int((tied - 1).sum())
    assert counts[network[1]] == int((expected == 0).sum() - (pool(x) < 0).sum())
    for value, gradient in ((output, free.grad), (again, later.grad)):
        assert torch.equal(value, expected) and torch.equal(gradient, plain.grad)
    assert "forward" not in vars(pool) and "forward" not in vars(network[1])  # given back


def test_a_nudge_moves_no_unit_off_its_free_kink():
    """Tied entries perturbed in every direction keep autograd's winner; an untied entry that
    overtakes the winner still wins; a ReLU unit at exactly 0 stays inactive, others switch."""
    pool = nn.MaxPool2d(2)
    x = torch.zeros(1, 1, 2, 4, dtype=torch.float64)
    x[0, 0, :, 2:] = torch.tensor([[1.0, 0.5], [0.9, 0.2]])  # second window untied, winner 1.0
    network = nn.Sequential(pool)
    relu = nn.Sequential(nn.ReLU())
    with kinks_pinned(network) as pins, kinks_pinned(relu) as relu_pins:
        network(x)
        relu(torch.tensor([0.0, -1.0, 1e-3], dtype=torch.float64))
        pins.fix()
        relu_pins.fix()
        for _ in range(20):
            moved = (x + 1e-6 * torch.randn_like(x)).requires_grad_()
            network(moved).sum().backward()
            assert moved.grad[0, 0, 0, 0] == 1 and moved.grad[0, 0, :, :2].sum() == 1  # autograd's first entry
        overtaken = x.clone()
        overtaken[0, 0, 1, 2] = 1.5
        assert network(overtaken)[0, 0, 0, 1] == 1.5
        assert relu(torch.tensor([1e-3, 1e-3, -1e-3], dtype=torch.float64)).tolist() == [0.0, 1e-3, 0.0]


def test_a_module_used_twice_or_without_kinks_is_not_pinned():
    """Pinning changes only units on a kink of a layer's one call in the free state."""
    shared = nn.ReLU()
    network = nn.Sequential(nn.Linear(3, 3), shared, nn.Linear(3, 3), shared, nn.MaxPool1d(1))
    torch.manual_seed(0)
    with kinks_pinned(network) as pins:
        network(torch.randn(4, 3))
        pins.fix()
        assert "forward" not in vars(shared) and pins.on_kink == {}


def _two_unit_pool(lam: float):
    """x_0 -> x_1 = (x_0 + 1/2, x_0 + 1/2) -> v = max(x_1) -> logits (v, -v), class 1: the two
    entries of x_1 tie at the free state, and the nudge pushes the winner down (dL/dv = 2 p_0 > 0),
    so on the true max it would lose the tie."""
    first = nn.Sequential(nn.Linear(1, 2), nn.Unflatten(1, (1, 1, 2)))
    second = nn.Sequential(nn.MaxPool2d((1, 2)), nn.Flatten(), nn.Linear(1, 2))
    network = nn.Sequential(first, second).double()
    with torch.no_grad():
        first[0].weight.fill_(1.0)
        first[0].bias.fill_(0.5)
        second[2].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        second[2].bias.zero_()
    inputs = torch.linspace(-0.4, 0.4, 5, dtype=torch.float64)[:, None]
    return network, inputs, torch.ones(5, dtype=torch.long)


def _equilibrium(inputs: torch.Tensor, lam: float, share: float):
    """The stationarity condition of E = 1/2 ||eps||^2 + lam CE((v, -v), 1) where the first entry
    of x_1 takes ``share`` of dCE/dv = 2 p_0 and the second the rest: eps_1 = -share lam 2 p_0,
    eps_2 = -(1 - share) lam 2 p_0, v = x_0 + 1/2 + eps_1. share = 1 is autograd's piece (the first
    entry wins, eps_2 = 0); share = 1/2 the tie kept at equilibrium (eps_1 = eps_2, a split winner:
    the only share with both entries equal). Solved per sample by fixed-point iteration (a
    contraction for lam < 1); returns the update (1/lam) dE/dtheta."""
    c = inputs[:, 0] + 0.5
    eps = torch.zeros_like(c)
    for _ in range(200):
        v = c + eps
        p0 = torch.softmax(torch.stack([v, -v], 1), 1)[:, 0]
        eps = -share * lam * 2 * p0
    v = c + eps
    p = torch.softmax(torch.stack([v, -v], 1), 1)
    signal = p - torch.tensor([0.0, 1.0], dtype=p.dtype)  # dCE/dlogits
    errors = torch.stack([eps, -(1 - share) * lam * 2 * p[:, 0]])  # (entry, sample)
    batch = len(c)
    return {"0.0.weight": (-errors / lam * inputs[:, 0]).sum(1)[:, None] / batch,
            "0.0.bias": (-errors / lam).sum(1) / batch,
            "1.2.weight": (signal * v[:, None]).sum(0)[:, None] / batch, "1.2.bias": signal.sum(0) / batch}


def test_a_tie_the_nudge_would_break_converges_to_autograds_piece(monkeypatch):
    """pc_nudge at a fixed lam = 0.1 (float64) converges and returns the update at the
    equilibrium of autograd's piece, written here from its stationarity condition; as lam -> 0
    it tends to autograd's backprop, which sends the tie's gradient to the first entry. With the
    pins removed the same phase has no equilibrium on either piece: plain descent only settles,
    and the active set (``core.active_set``) finds the equilibrium on the kink, a split winner
    (each entry takes half of dCE/dv: the update of ``_equilibrium`` at share 1/2)."""
    network, inputs, targets = _two_unit_pool(0.1)
    estimate = build_algorithm("pc_nudge", lam=0.1, tol=1e-12, error_tolerance=None).estimate(network, inputs, targets)
    assert estimate.converged and estimate.inference[0].steps <= 60
    for name, expected in _equilibrium(inputs, 0.1, share=1.0).items():
        torch.testing.assert_close(estimate.gradients[name], expected, rtol=1e-9, atol=1e-12)
    backprop = build_algorithm("bp").gradients(network, inputs, targets)
    assert backprop["0.0.weight"][1] == 0  # autograd's tie-break: all to the first entry
    weak = build_algorithm("pc_nudge", lam=1e-7, error_tolerance=None).gradients(network, inputs, targets)
    for name, gradient in backprop.items():
        torch.testing.assert_close(weak[name], gradient, rtol=1e-5, atol=1e-9)

    monkeypatch.setattr(kinks.KinkPins, "fix", kinks.KinkPins.release)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unpinned = build_algorithm("pc_nudge", lam=0.1, tol=1e-12, error_tolerance=None, active_set=False
                                   ).estimate(network, inputs, targets)
    assert not unpinned.converged
    on_kink = build_algorithm("pc_nudge", lam=0.1, tol=1e-12, error_tolerance=None).estimate(network, inputs, targets)
    assert on_kink.converged and on_kink.inference[0].units_on_kink == len(inputs)  # one tie per sample
    for name, expected in _equilibrium(inputs, 0.1, share=0.5).items():
        torch.testing.assert_close(on_kink.gradients[name], expected, rtol=1e-9, atol=1e-12)


def test_subclasses_and_replaced_forwards_are_not_pinned():
    """A MaxPool2d subclass with its own forward, or a ReLU whose forward was replaced on the
    instance, computes another function than a pin would: the estimate stays backprop's (float64,
    against autograd), and neither module is touched."""

    class ScaledPool(nn.MaxPool2d):
        def forward(self, x):
            return 2.0 * super().forward(x) + 1.0

    torch.manual_seed(0)
    relu = nn.ReLU()
    relu.forward = lambda x: torch.relu(x) * 0.5
    network = nn.Sequential(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), relu, ScaledPool(2)),
                            nn.Sequential(nn.Flatten(), nn.Linear(64, 10))).double()
    inputs = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    inputs[:, :, :4, :4] = 0
    targets = torch.randint(0, 10, (8,))
    estimate = build_algorithm("pc_nudge").gradients(network, inputs, targets)
    reference = build_algorithm("bp").gradients(network, inputs, targets)
    for name, gradient in reference.items():
        torch.testing.assert_close(estimate[name], gradient, rtol=1e-9, atol=1e-12)


def test_compiled_steps_run_eagerly_in_a_batch_with_pinned_kinks():
    """A pin is not traced by torch.compile, so whole-graph compiled steps would fail on a batch
    whose ReLU has units at exactly 0; they run eagerly there, with the eager numbers."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU()),
                            nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU()), nn.Linear(8, 3)).double()
    inputs = torch.randn(4, 6, dtype=torch.float64)
    inputs[0] = 0  # an all-zero sample: exact ReLU zeros
    targets = torch.tensor([0, 1, 2, 0])
    settings = dict(solver="gd", steps=50, step_size=0.1, tol=None)
    eager = build_algorithm("pc", **settings).gradients(network, inputs, targets)
    compiled = build_algorithm("pc", **settings)
    compiled.compile_inference = {"backend": "eager"}
    for name, gradient in compiled.gradients(network, inputs, targets).items():
        torch.testing.assert_close(gradient, eager[name], rtol=1e-12, atol=1e-14)
