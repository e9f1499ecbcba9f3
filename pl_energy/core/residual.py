"""Residual networks whose blocks are energy layers: the skip connection lives inside a layer.

Layer l of a residual stack maps x_{l-1} to mu_l = x_{l-1} + a_l f_l(x_{l-1}); predictive coding
then relaxes one activity per block (as PCX and JPC do), and the feedforward pass is still the
free equilibrium. Hopfield energies (EP, CHL) have no such layers: their couplings are affine
(``core.couplings`` refuses a block).

Two parameterisations (``parameterisation``):

- ``"standard"``: PyTorch's default initialisation and unscaled branches, a_l = 1.
- ``"mupc"``: muPC (Innocenti et al. 2025), Depth-muP for predictive coding. Weights are drawn
  from N(0, 1) and scaled in the forward pass: the input layer by 1/sqrt(D) (D its fan-in), each
  residual branch by 1/sqrt(N L) (N the width, L the number of layers: Depth-muP's 1/sqrt(L)
  branch scaling on top of the 1/sqrt(N) of a unit-variance weight), the output layer by 1/N
  (muP's output multiplier). The activities of a deep net then stay of order one at
  initialisation, at every width and depth, and so does the activity Hessian's conditioning that
  inference depends on; the same learning rate and inference step size transfer across widths
  and depths. With converged inference (the default ``error`` solver) no extra step-size scaling
  is needed: the scalings live in the layers, and the solver's residual is scale-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .activations import make_activation

PARAMETERISATIONS = ("standard", "mupc")


class ScaledLinear(nn.Module):
    """``scale * (x W^T + b)``, with W drawn from N(0, 1) (muPC) or as ``nn.Linear`` does.

    Args:
        in_features: input width.
        out_features: output width.
        scale: the forward multiplier a of the layer.
        bias: add a bias (also scaled).
        unit_init: draw W from N(0, 1) (muPC) instead of ``nn.Linear``'s default.
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0, bias: bool = True,
                 unit_init: bool = False) -> None:
        super().__init__()
        reference = nn.Linear(in_features, out_features, bias=bias)
        self.weight = reference.weight
        self.bias = reference.bias
        if unit_init:
            with torch.no_grad():
                self.weight.normal_(0.0, 1.0)
                if self.bias is not None:
                    self.bias.zero_()
        self.in_features, self.out_features, self.scale = in_features, out_features, float(scale)
        self.unit_init = unit_init

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale:g}, "
                f"bias={self.bias is not None}")


class Residual(nn.Module):
    """``x + branch(x)`` (``shortcut(x) + branch(x)`` when the shapes differ).

    Args:
        branch: the residual branch.
        shortcut: a projection of x to the branch's shape (None: the identity).
    """

    def __init__(self, branch: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        return (x if self.shortcut is None else self.shortcut(x)) + self.branch(x)


def _check_parameterisation(parameterisation: str) -> None:
    if parameterisation not in PARAMETERISATIONS:
        raise ValueError(f"unknown parameterisation {parameterisation!r}; choose one of {PARAMETERISATIONS}")


class ResidualMLP(nn.Sequential):
    """A deep fully connected residual network of ``depth`` energy layers (as in muPC's
    experiments, Innocenti et al. 2025): an input layer, ``depth - 2`` pre-activation residual
    blocks x + a W f(x), and an output layer a W f(x).

    Args:
        in_features: input width (784 for flat MNIST).
        width: width N of every hidden layer.
        depth: number of layers L (weight matrices), at least 2.
        num_classes: output width.
        activation: the activation f (a name of ``ACTIVATIONS``).
        parameterisation: ``standard`` or ``mupc`` (see the module docstring).
        bias: give every layer a bias.
    """

    def __init__(self, in_features: int = 784, width: int = 128, depth: int = 20, num_classes: int = 10,
                 activation: str = "relu", parameterisation: str = "standard", bias: bool = True) -> None:
        _check_parameterisation(parameterisation)
        if depth < 2:
            raise ValueError(f"a residual MLP needs depth >= 2 (input and output layers), got {depth}")
        mupc = parameterisation == "mupc"
        scales = (1 / math.sqrt(in_features), 1 / math.sqrt(width * depth), 1 / width) if mupc else (1.0,) * 3
        layers: list[nn.Module] = [ScaledLinear(in_features, width, scales[0], bias, mupc)]
        for _ in range(depth - 2):
            layers.append(Residual(nn.Sequential(make_activation(activation),
                                                 ScaledLinear(width, width, scales[1], bias, mupc))))
        layers.append(nn.Sequential(make_activation(activation), ScaledLinear(width, num_classes, scales[2], bias, mupc)))
        super().__init__(*layers)
        self.init_args = {"in_features": in_features, "width": width, "depth": depth, "num_classes": num_classes,
                          "activation": activation, "parameterisation": parameterisation, "bias": bias}


class ResNet(nn.Sequential):
    """A ResNet (He et al. 2016) whose basic blocks are energy layers: a 3x3 conv stem, stages of
    basic blocks (conv-norm-act-conv-norm plus the skip, then act; a 1x1 strided projection
    where the shape changes), and a head (global average pool, flatten, linear). With the
    defaults it is the CIFAR ResNet-18 (stages of 2 blocks of 64, 128, 256 and 512 channels).

    Args:
        in_shape: the image's (channels, height, width).
        num_classes: output width.
        widths: channels of each stage.
        blocks: basic blocks per stage.
        activation: the activation (a name of ``ACTIVATIONS``).
        batch_norm: BatchNorm after each convolution (one set of batch statistics per batch
            under inference: ``core.forward_semantics``).
    """

    def __init__(self, in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 widths: Sequence[int] = (64, 128, 256, 512), blocks: Sequence[int] = (2, 2, 2, 2),
                 activation: str = "relu", batch_norm: bool = True) -> None:
        in_shape, widths, blocks = [int(v) for v in in_shape], [int(v) for v in widths], [int(v) for v in blocks]
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths and blocks give one entry per stage, got {widths} and {blocks}")

        def norm(channels: int) -> list[nn.Module]:
            return [nn.BatchNorm2d(channels)] if batch_norm else []

        stem = nn.Sequential(nn.Conv2d(in_shape[0], widths[0], 3, padding=1, bias=not batch_norm),
                             *norm(widths[0]), make_activation(activation))
        layers: list[nn.Module] = [stem]
        channels = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                branch = nn.Sequential(nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=not batch_norm),
                                       *norm(width), make_activation(activation),
                                       nn.Conv2d(width, width, 3, padding=1, bias=not batch_norm), *norm(width))
                shortcut = None if stride == 1 and channels == width else nn.Sequential(
                    nn.Conv2d(channels, width, 1, stride=stride, bias=not batch_norm), *norm(width))
                layers.append(nn.Sequential(Residual(branch, shortcut), make_activation(activation)))
                channels = width
        layers.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)))
        super().__init__(*layers)
        self.init_args = {"in_shape": in_shape, "num_classes": num_classes, "widths": widths, "blocks": blocks,
                          "activation": activation, "batch_norm": batch_norm}
