"""The rounding of the arithmetic a network's layers run in: the dtype's, or TF32's on a GPU.

On NVIDIA GPUs of compute capability 8.0 and later (Ampere, Hopper, ...), cuBLAS matrix
products and cuDNN convolutions of float32 tensors run on tensor cores in TF32 when PyTorch
allows it: each operand keeps 10 of float32's 23 mantissa bits, a machine epsilon of
2^-10 = 9.8e-4 against float32's 1.2e-7 (products accumulate in float32). PyTorch allows it
for convolutions by default (``torch.backends.cudnn.conv.fp32_precision == "tf32"``) and for
matrix products when asked (``torch.set_float32_matmul_precision("high")``, which Lightning
suggests on such GPUs; ``torch.backends.cuda.matmul.fp32_precision == "tf32"``).

Backprop under TF32 moves by about that epsilon times the network's conditioning (4e-2 in the
worst layer of VGG-5 at 1/8 width, with every operand rounded as TF32 rounds it, on a CPU). An
estimate read from a small difference of relaxed states, divided by the relative move its
nudge makes, loses that epsilon over the move: on Millidge et al. 2022's MLP with clip units and
TF32 products, EP with float32's automatic beta (a move of 4.9e-3) was 13 % from its IEEE
float32 estimate (a smaller MLP: 8-17 % over four seeds), EP at its defaults (a move of 1.2)
0.1 %. On VGG-5 with clip units and max-pooling, TF32 convolutions moved EP at its defaults and
CHL at gamma = 0.3 to 1 by 113-146 %, as far as a 1e-3 perturbation of the inputs moves them in
IEEE float32: there the estimates are ill-conditioned, and TF32 is such a perturbation at every
product (``tests/test_tf32.py`` emulates it). EP's and CHL's resolution checks take it
(``algorithms.hopfield_common``).

Only the PyTorch flags' new API is read (``fp32_precision``): reading the legacy flags
(``allow_tf32``) raises after some mixes of the two APIs.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from .structure import structure_of

__all__ = ["TF32_EPSILON", "describe_tf32", "tf32_operations", "tf32_remedy"]

#: The machine epsilon of TF32 (10 mantissa bits).
TF32_EPSILON = 2.0 ** -10


def tf32_operations(network: nn.Module, tensor: Tensor | None) -> tuple[str, ...]:
    """The operations of ``network`` that run in TF32 ("matrix products", "convolutions") on
    ``tensor`` (one of its parameters or states: its dtype and device): none unless it is
    float32 on a CUDA device of compute capability 8.0 or later; then matrix products where
    cuBLAS's float32 precision is "tf32", convolutions where the network has a convolution module
    (``nn.Conv*d``, ``nn.ConvTranspose*d``) and cuDNN, enabled, runs float32 convolutions in
    "tf32"."""
    if tensor is None or tensor.dtype != torch.float32 or not _tensor_cores(tensor.device):
        return ()
    operations = []
    if torch.backends.cuda.matmul.fp32_precision == "tf32":
        operations.append("matrix products")
    if (torch.backends.cudnn.enabled and torch.backends.cudnn.conv.fp32_precision == "tf32"
            and any(isinstance(module, nn.modules.conv._ConvNd) for _, module in structure_of(network).submodules)):
        operations.append("convolutions")
    return tuple(operations)


def describe_tf32(operations: tuple[str, ...]) -> str:
    """``operations`` (``tf32_operations``) as a message names them."""
    return f"TF32 (the GPU's {' and '.join(operations)} of float32)"


def tf32_remedy(operations: tuple[str, ...]) -> str:
    """How to run ``operations`` (``tf32_operations``) in IEEE float32 again: PyTorch's flags in
    Python, or, from the command line (``pl-energy``), the environment variable with which
    NVIDIA's libraries leave TF32 off."""
    flags = {"matrix products": "torch.backends.cuda.matmul.fp32_precision = 'ieee'",
             "convolutions": "torch.backends.cudnn.conv.fp32_precision = 'ieee'"}
    return " and ".join(flags[operation] for operation in operations) + "; from the command line NVIDIA_TF32_OVERRIDE=0"


def _tensor_cores(device: torch.device) -> bool:
    """Whether ``device`` is an NVIDIA GPU with TF32 tensor cores (compute capability >= 8.0)
    whose libraries have not been told to leave them off (``NVIDIA_TF32_OVERRIDE=0``, which
    cuBLAS and cuDNN honour; Triton kernels that inductor generates for products under a "tf32"
    matmul flag do not, and are not seen here). ROCm's capabilities are gfx numbers, not
    NVIDIA's: a ROCm build counts as none."""
    return (device.type == "cuda" and torch.version.hip is None and os.environ.get("NVIDIA_TF32_OVERRIDE") != "0"
            and torch.cuda.get_device_capability(device) >= (8, 0))
