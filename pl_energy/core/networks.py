"""Networks of the energy models: an ``nn.Sequential`` whose top-level children are the layers.

Layer l maps the activity x_{l-1} to its prediction mu_l = block_l(x_{l-1}); x_0 is the input.
At the free equilibrium of predictive coding x_l = mu_l, i.e. the feedforward pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor, nn

from .activations import make_activation


def mlp(sizes: Sequence[int], activation: str = "relu", bias: bool = True) -> nn.Sequential:
    """The seeds' MLPs: ``Linear`` + activation per hidden layer, a linear output layer.

    ``mlp([784, 128, 64, 10])`` is seed 003's MNIST net (A.1); ``mlp([50176, 4096, 2048, 1024, 27])``
    seed 000's ImageNet net (A.9). Each top-level child is one layer of the energy model.
    """
    sizes = list(sizes)
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"mlp needs at least two positive sizes (input, output), got {sizes}")
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(fan_in, fan_out, bias=bias)
        is_output = index == len(sizes) - 2
        layers.append(linear if is_output else nn.Sequential(linear, make_activation(activation)))
    return nn.Sequential(*layers)


def layers_of(network: nn.Module) -> list[nn.Module]:
    """The layers (top-level children) of an energy network, checked to be a usable stack."""
    if not isinstance(network, nn.Sequential):
        raise TypeError(
            f"energy networks are nn.Sequential stacks of layers, got {type(network).__name__}; "
            "wrap your layers in nn.Sequential (each top-level child is one layer)"
        )
    layers = list(network.children())
    if not layers:
        raise ValueError("the network has no layers")
    return layers


def feedforward(layers: Sequence[nn.Module], inputs: Tensor) -> list[Tensor]:
    """x_0 = inputs, x_l = layer_l(x_{l-1}); errors name the layer whose input did not fit."""
    activities = [inputs]
    for index, layer in enumerate(layers, start=1):
        with naming_layer(layer, index, activities[-1]):
            activities.append(layer(activities[-1]))
    return activities


@contextmanager
def naming_layer(layer: nn.Module, index: int, x: Tensor) -> Iterator[None]:
    """Turn a shape error raised inside layer ``index`` into one that names it and the shapes."""
    try:
        yield
    except RuntimeError as error:
        if any(word in str(error) for word in ("shape", "size", "dimension")):
            raise ValueError(
                f"layer {index} ({_describe(layer)}) cannot take an input of shape "
                f"{tuple(x.shape)}: {error}"
            ) from error
        raise


def _describe(layer: nn.Module) -> str:
    text = " ".join(repr(layer).split())
    return text if len(text) <= 120 else text[:117] + "..."
