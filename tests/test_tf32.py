"""TF32: GPUs that run float32 products or convolutions with 10-bit operands (``core.arithmetic``).

Oracles: the flags' documented meaning (PyTorch's new ``fp32_precision`` API), and TF32 itself,
emulated at the dispatcher (``benchmarks/tf32_emulated.py``: every operand of a float32 matrix
product or convolution rounded to TF32's 10 mantissa bits, the products accumulated in float32,
as tensor cores do): the checks refuse where the emulated arithmetic moves the estimate, and
stay quiet where it does not. The device is a CPU: a test says that it has tensor cores where
the check needs one.
"""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from pl_energy import build_algorithm, mlp
from pl_energy.algorithms.warnings import PrecisionWarning
from pl_energy.core import arithmetic
from pl_energy.core.activations import Clip
from pl_energy.core.arithmetic import tf32_operations

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from tf32_emulated import TF32  # noqa: E402  (the emulation, shared with the benchmark)


@pytest.fixture
def flags():
    """The new-API TF32 flags, put back as they were."""
    matmul, conv = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    yield torch.backends
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul, conv


@pytest.fixture
def tensor_cores(monkeypatch):
    """This CPU counts as a GPU with TF32 tensor cores."""
    monkeypatch.setattr(arithmetic, "_tensor_cores", lambda device: True)


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Clip()),
                         nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 10)))


def test_the_operations_in_tf32_follow_the_flags_the_device_and_the_layers(flags, monkeypatch):
    """A float32 tensor on a CUDA device of capability 8.0 or later: products in TF32 where
    cuBLAS's float32 precision is "tf32", convolutions where the network has one and cuDNN's
    conv precision is "tf32" (PyTorch's default); nothing in float64, on a CPU, before Ampere or
    with NVIDIA_TF32_OVERRIDE=0."""
    capability = {"value": (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability["value"])
    on_gpu = types.SimpleNamespace(dtype=torch.float32, device=torch.device("cuda", 0))
    convolutional, dense = conv_net(), mlp([8, 4, 3])
    flags.cuda.matmul.fp32_precision, flags.cudnn.conv.fp32_precision = "ieee", "tf32"
    assert tf32_operations(convolutional, on_gpu) == ("convolutions",)
    assert tf32_operations(dense, on_gpu) == ()  # no convolution: the conv flag does not apply
    flags.cuda.matmul.fp32_precision = "tf32"
    assert tf32_operations(convolutional, on_gpu) == ("matrix products", "convolutions")
    assert tf32_operations(dense, on_gpu) == ("matrix products",)
    flags.cudnn.conv.fp32_precision = "ieee"
    assert tf32_operations(convolutional, on_gpu) == ("matrix products",)
    assert tf32_operations(dense, types.SimpleNamespace(dtype=torch.float64, device=on_gpu.device)) == ()
    assert tf32_operations(dense, torch.zeros(1)) == ()  # a CPU
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")  # NVIDIA's libraries leave TF32 off
    assert tf32_operations(dense, on_gpu) == ()
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE")
    capability["value"] = (7, 5)  # Turing: no TF32
    assert tf32_operations(dense, on_gpu) == ()


def worst_change(algorithm, network, inputs, targets) -> float:
    """The worst layer's relative change of the estimate under emulated TF32."""
    ieee = algorithm.gradients(network, inputs, targets)
    with TF32():
        tf32 = algorithm.gradients(network, inputs, targets)
    return max(((tf32[name] - ieee[name]).norm() / ieee[name].norm()).item() for name in ieee)


def test_tf32_moves_ep_where_its_nudge_is_small_and_not_at_its_default():
    """The oracle of the refusal below: EP's automatic beta moves the state by float32's
    eps^(1/3) = 4.9e-3, of which TF32 products resolve only a fifth; beta = 0.5 moves it by O(1)."""
    torch.manual_seed(0)
    network, inputs, targets = mlp([32, 32, 32, 10], activation="clip"), torch.rand(16, 32), torch.randint(0, 10, (16,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the emulated products stall the phases above tol: not the point here
        assert worst_change(build_algorithm("ep", beta="auto", allow_imprecise=True), network, inputs, targets) > 0.05
        assert worst_change(build_algorithm("ep"), network, inputs, targets) < 0.01


def test_ep_and_chl_refuse_a_nudge_tf32_cannot_resolve_and_say_how_to_run_ieee(flags, tensor_cores):
    """With TF32 products, EP's automatic beta (a move of 4.9e-3) is refused in one line naming
    TF32 and the flag that turns it off (allow_imprecise: a PrecisionWarning), CHL's gamma^(L-1)
    = 1e-2 is warned about; EP's default beta is neither; IEEE products and, on a dense network,
    TF32 convolutions change nothing, nor does float64."""
    torch.manual_seed(0)
    network, inputs, targets = mlp([32, 32, 32, 10], activation="clip"), torch.rand(16, 32), torch.randint(0, 10, (16,))
    flags.cuda.matmul.fp32_precision, flags.cudnn.conv.fp32_precision = "ieee", "tf32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for algorithm in (build_algorithm("ep", beta="auto"), build_algorithm("chl"), build_algorithm("ep")):
            algorithm.gradients(network, inputs, targets)
        flags.cuda.matmul.fp32_precision = "tf32"
        build_algorithm("ep").gradients(network, inputs, targets)
    tf32, fix = r"TF32 \(the GPU's matrix products of float32\)", r"torch.backends.cuda.matmul.fp32_precision = 'ieee'"
    with pytest.raises(ValueError, match=rf"beta=\S+ moves the state by 4.9e-03 of its size, which {tf32} resolves to "
                                         rf"about 20%.*IEEE float32 \({fix}; from the command line "
                                         r"NVIDIA_TF32_OVERRIDE=0\), or use a "
                                         r"larger beta or float64 parameters "
                                         r"\(allow_imprecise=True"):
        build_algorithm("ep", beta="auto").gradients(network, inputs, targets)
    with pytest.warns(PrecisionWarning, match=fix):
        build_algorithm("ep", beta="auto", allow_imprecise=True).gradients(network, inputs, targets)
    with pytest.warns(PrecisionWarning, match=rf"gamma=0.1 over 3 layers\) moves the state by 1.0e-02 of its "
                                              rf"size, which {tf32} resolves to about 10%.*{fix}"):
        build_algorithm("chl").gradients(network, inputs, targets)
    double = mlp([32, 32, 32, 10], activation="clip").double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_algorithm("ep", beta="auto").gradients(double, inputs.double(), targets)


def test_tf32_convolutions_refuse_ep_on_a_convolutional_network(flags, tensor_cores):
    """PyTorch's default, TF32 convolutions, on a network with a convolution: EP's automatic
    beta is refused, naming the conv flag; with it set to "ieee" it runs."""
    network, targets = conv_net(), torch.randint(0, 10, (8,))
    inputs = torch.rand(8, 1, 6, 6)
    flags.cuda.matmul.fp32_precision, flags.cudnn.conv.fp32_precision = "ieee", "tf32"
    with pytest.raises(ValueError, match=r"which TF32 \(the GPU's convolutions of float32\) resolves.*"
                                         r"torch.backends.cudnn.conv.fp32_precision = 'ieee'"):
        build_algorithm("ep", beta="auto").gradients(network, inputs, targets)
    flags.cudnn.conv.fp32_precision = "ieee"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_algorithm("ep", beta="auto").gradients(network, inputs, targets)


def test_tf32_moves_the_default_pc_nudge_as_it_moves_backprop():
    """Why PC's checks take the dtype's epsilon: its error solver carries the nudge's move in
    difference form, so TF32 costs the default pc_nudge what it costs backprop (and the
    relaxed Hopfield estimates far more, above)."""
    torch.manual_seed(0)
    network, inputs, targets = mlp([32, 32, 32, 10]), torch.rand(16, 32), torch.randint(0, 10, (16,))
    backprop = worst_change(build_algorithm("bp"), network, inputs, targets)
    assert 1e-4 < backprop < 1e-2
    assert worst_change(build_algorithm("pc_nudge"), network, inputs, targets) < 1.5 * backprop


def test_phases_that_tf32_stalls_say_so(flags, tensor_cores):
    """Under (emulated) TF32 products the nudged phases of EP at beta = 0.1 stall above their
    tolerance and run to the step cap: besides the NotConvergedWarning, a PrecisionWarning names
    TF32 and the flag, since more steps would not help. In IEEE float32 they converge, quietly."""
    torch.manual_seed(0)
    network, inputs, targets = mlp([32, 32, 32, 10], activation="clip"), torch.rand(16, 32), torch.randint(0, 10, (16,))
    flags.cuda.matmul.fp32_precision = "tf32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build_algorithm("ep", beta=0.1).estimate(network, inputs, targets).converged  # IEEE arithmetic
    with warnings.catch_warnings(record=True) as caught, TF32():
        warnings.simplefilter("always")
        estimate = build_algorithm("ep", beta=0.1, steps=100).estimate(network, inputs, targets)
    assert not estimate.converged
    assert any(issubclass(w.category, PrecisionWarning) and "stopped short of tol with TF32 (the GPU's matrix "
               "products of float32)" in str(w.message) and "fp32_precision = 'ieee'" in str(w.message)
               for w in caught)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="needs a CUDA GPU with TF32 (Ampere or later)")
def test_on_a_tf32_gpu_the_emulation_is_what_the_tensor_cores_compute_and_ep_is_refused(flags):
    """On the GPU itself: with TF32 convolutions and products allowed, cuDNN and cuBLAS compute
    what this file's emulation computes (operands rounded, float32 accumulation: far closer to
    it than to IEEE float32); ``tf32_operations`` reports them; EP at beta="auto" on a
    convolutional network is refused, and runs with the flags set to "ieee"."""
    torch.manual_seed(0)
    x, w = torch.randn(16, 8, 12, 12, device="cuda"), torch.randn(32, 8, 3, 3, device="cuda")
    a, b = torch.randn(256, 512, device="cuda"), torch.randn(512, 128, device="cuda")
    flags.cuda.matmul.fp32_precision, flags.cudnn.conv.fp32_precision = "ieee", "ieee"
    ieee = torch.nn.functional.conv2d(x, w), a @ b
    with TF32():
        emulated = torch.nn.functional.conv2d(x, w), a @ b
    flags.cuda.matmul.fp32_precision, flags.cudnn.conv.fp32_precision = "tf32", "tf32"
    tensor_cores = torch.nn.functional.conv2d(x, w), a @ b
    for hardware, emulation, exact in zip(tensor_cores, emulated, ieee):
        assert (hardware - emulation).norm() < 0.1 * (hardware - exact).norm()
    network = conv_net().cuda()
    inputs, targets = torch.rand(8, 1, 6, 6, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    assert tf32_operations(network, next(network.parameters())) == ("matrix products", "convolutions")
    with pytest.raises(ValueError, match="TF32"):
        build_algorithm("ep", beta="auto").gradients(network, inputs, targets)
    flags.cuda.matmul.fp32_precision, flags.cudnn.conv.fp32_precision = "ieee", "ieee"
    build_algorithm("ep", beta="auto").gradients(network, inputs, targets)
