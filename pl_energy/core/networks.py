"""Networks of the energy models: an ``nn.Sequential`` whose top-level children are the layers.

Layer l maps the activity x_{l-1} to its prediction mu_l = block_l(x_{l-1}); x_0 is the input.
At the free equilibrium of predictive coding x_l = mu_l, i.e. the feedforward pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn.modules.module import (_global_backward_hooks, _global_backward_pre_hooks, _global_forward_hooks,
                                     _global_forward_pre_hooks)

from .activations import make_activation
from .own_forward import computes_itself
from .structure import structure_of


class MLP(nn.Sequential):
    """The papers' MLPs: ``Linear`` + activation per hidden layer, a linear output layer.

    ``MLP([784, 128, 64, 10])`` is Millidge et al. 2022's MNIST net (A.1); ``MLP([50176, 4096,
    2048, 1024, 27])`` Song et al. 2020's ImageNet net (A.9). Each top-level child is one layer
    of the energy model.

    Args:
        sizes: layer widths, input first, classes last.
        activation: hidden activation (a name of ``pl_energy.core.activations.ACTIVATIONS``).
        bias: give every ``Linear`` a bias.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu", bias: bool = True) -> None:
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"an MLP needs at least two positive sizes (input, output), got {sizes}")
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            linear = nn.Linear(fan_in, fan_out, bias=bias)
            is_output = index == len(sizes) - 2
            layers.append(linear if is_output else nn.Sequential(linear, make_activation(activation)))
        super().__init__(*layers)
        self.init_args = {"sizes": sizes, "activation": activation, "bias": bias}


def mlp(sizes: Sequence[int], activation: str = "relu", bias: bool = True) -> MLP:
    """``MLP(sizes, activation, bias)``."""
    return MLP(sizes, activation=activation, bias=bias)


class ConvNet(nn.Sequential):
    """A VGG-style convolutional network (Simonyan and Zisserman 2015) as energy layers.

    Conv block b is one layer: ``Conv2d(k x k, padding) -> pool (pool_size) -> activation``.
    Pooling comes before the activation: max-pooling commutes with any non-decreasing activation
    (relu, clip, tanh, sigmoid, leaky_relu, softplus), and one trailing activation per layer is
    the form the Hopfield energy of EP and CHL needs (Ernoult et al. 2019). GELU and SiLU are not
    monotone, so with them (and with average pooling and any nonlinear unit) pool-then-activation
    is a different network from the activation-then-pool of VGG-5 in PCX (Pinchetti et al. 2024). The dense head is ``Flatten -> Linear ->
    activation`` for each hidden width, then a linear output layer (one layer each; the first
    holds the ``Flatten``). With ``in_shape=(1, 28, 28)`` and flat inputs (MNIST's default
    ``flatten=True``) the first layer starts with an ``Unflatten``.

    Args:
        in_shape: the image's (channels, height, width).
        channels: output channels of each conv block.
        num_classes: width of the output layer.
        kernel_size: side of the square convolution kernels.
        padding: zero padding of every convolution (``kernel_size // 2`` keeps the size).
        pool: ``max``, ``avg`` or ``none`` (no pooling).
        pool_size: side and stride of the square pooling windows.
        hidden: widths of the dense hidden layers between the conv blocks and the output.
        activation: the activation of every hidden layer (a name of ``ACTIVATIONS``).
        flat_input: the inputs arrive flattened (``C*H*W`` features) and the first layer
            unflattens them.
        pooled: which conv blocks pool (one flag per block; None: every block).
    """

    def __init__(self, in_shape: Sequence[int] = (1, 28, 28), channels: Sequence[int] = (32, 64),
                 num_classes: int = 10, kernel_size: int = 3, padding: int = 1, pool: str = "max",
                 pool_size: int = 2, hidden: Sequence[int] = (), activation: str = "relu",
                 flat_input: bool = False, pooled: Sequence[bool] | None = None) -> None:
        in_shape, channels, hidden = [int(v) for v in in_shape], [int(v) for v in channels], [int(v) for v in hidden]
        if len(in_shape) != 3 or min(in_shape) < 1:
            raise ValueError(f"in_shape is (channels, height, width), got {in_shape}")
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of {sorted(POOLS)}")
        pooled = [True] * len(channels) if pooled is None else [bool(v) for v in pooled]
        if len(pooled) != len(channels):
            raise ValueError(f"pooled gives one flag per conv block: {len(channels)} blocks, got {pooled}")
        layers: list[nn.Module] = []
        depth, height, width = in_shape
        for index, out in enumerate(channels):
            block: list[nn.Module] = [nn.Unflatten(1, tuple(in_shape))] if index == 0 and flat_input else []
            block.append(nn.Conv2d(depth, out, kernel_size, padding=padding))
            height, width = height + 2 * padding - kernel_size + 1, width + 2 * padding - kernel_size + 1
            if pool != "none" and pooled[index]:
                block.append(POOLS[pool](pool_size))
                height, width = height // pool_size, width // pool_size
            if min(height, width) < 1:
                raise ValueError(f"conv block {index + 1} of {channels} leaves no pixels of the "
                                 f"{in_shape[1]}x{in_shape[2]} input: use fewer blocks, padding or less pooling")
            block.append(make_activation(activation))
            layers.append(nn.Sequential(*block))
            depth = out
        features = depth * height * width if channels else in_shape[0] * in_shape[1] * in_shape[2]
        for index, size in enumerate([*hidden, int(num_classes)]):
            head: list[nn.Module] = [nn.Flatten()] if index == 0 else []
            head.append(nn.Linear(features, size))
            if index < len(hidden):
                head.append(make_activation(activation))
            layers.append(nn.Sequential(*head) if len(head) > 1 else head[0])
            features = size
        super().__init__(*layers)
        self.init_args = {"in_shape": in_shape, "channels": channels, "num_classes": int(num_classes),
                          "kernel_size": kernel_size, "padding": padding, "pool": pool,
                          "pool_size": pool_size, "hidden": hidden, "activation": activation,
                          "flat_input": flat_input, "pooled": pooled}


POOLS: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d, "none": nn.Identity}

#: VGG-style presets by depth (weight layers): conv widths and which blocks max-pool; a linear
#: output layer follows. VGG-5 is the network of the PC benchmarks of Pinchetti et al. 2024
#: (PCX): 128-256-512-512, each block pooled.
VGG_PRESETS: dict[int, tuple[tuple[int, ...], tuple[bool, ...]]] = {
    5: ((128, 256, 512, 512), (True, True, True, True)),
    7: ((128, 128, 256, 256, 512, 512), (False, True, False, True, False, True)),
    9: ((128, 128, 256, 256, 512, 512, 512, 512), (False, True, False, True, False, True, False, True)),
}


class VGG(ConvNet):
    """VGG-5, -7 or -9 (``VGG_PRESETS``): 3x3 convolutions with padding 1, ReLU, 2x2 max-pooling,
    each conv block one energy layer, then a linear output layer.

    Max-pooling and ReLU make the energy of PC and EP non-smooth: a nudge that moves a unit
    across its kink or breaks a tie of a pooling window leaves an equilibrium where the residual
    cannot vanish, and inference settles instead of converging. PC pins the kinks of the free
    state (``core.kinks``: MNIST's blank margins tie whole windows) and its automatic nudge is one
    rounding unit, so the default pc_nudge converges at its first-order start on VGG-5 (0 steps,
    ``RESULTS.md``); at a fixed lam such as the paper's 0.01 units cross kinks and phases settle
    (16-20 steps on VGG-5).

    Args:
        depth: 5, 7 or 9 weight layers.
        in_shape: the image's (channels, height, width); CIFAR's (3, 32, 32) by default.
        num_classes: width of the output layer.
        width: a multiplier of every block's channels (e.g. 0.25 for quick runs).
        activation: the activation of every conv block (``clip`` for EP and CHL).
        flat_input: the inputs arrive flattened and the first layer unflattens them.
        pool: ``max`` (VGG's) or ``avg`` (a smooth energy with a smooth activation).
    """

    def __init__(self, depth: int = 5, in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 width: float = 1.0, activation: str = "relu", flat_input: bool = False,
                 pool: str = "max") -> None:
        if depth not in VGG_PRESETS:
            raise ValueError(f"VGG depth {depth} is not one of {sorted(VGG_PRESETS)}")
        channels, pooled = VGG_PRESETS[depth]
        super().__init__(in_shape=in_shape, channels=[max(1, round(c * width)) for c in channels],
                         num_classes=num_classes, activation=activation, flat_input=flat_input, pooled=pooled,
                         pool=pool)
        self.init_args = {"depth": depth, "in_shape": [int(v) for v in in_shape], "num_classes": num_classes,
                          "width": width, "activation": activation, "flat_input": flat_input, "pool": pool}


def computes_as(module: nn.Module, cls: type[nn.Module]) -> bool:
    """True if ``module`` is a ``cls`` that computes as ``cls`` does, so that it may get ``cls``'s
    closed forms: ``forward_of`` ``cls``, and a call of it is that forward on its own parameters
    (``computes_itself``: no hooks, no parametrized weight)."""
    return forward_of(module, cls) and computes_itself(module)


def forward_of(module: nn.Module, cls: type[nn.Module]) -> bool:
    """True if ``module`` is a ``cls`` whose ``forward`` is ``cls``'s: not a subclass that
    overrides it (a scaled or low-rank Linear, say)."""
    return isinstance(module, cls) and type(module).forward is cls.forward


def check_entries(network: nn.Module) -> None:
    """Refuse, in one line, an entry of the stack that is None (its forward cannot call it) or a
    module at several places (``named_children`` lists it once, ``forward`` calls it at each)."""
    empty = [name for name, layer in network._modules.items() if layer is None]
    if empty:
        raise ValueError(f"the stack has no module at {', '.join(empty)} (None), which its forward cannot call: "
                         "remove the entry (del network[index]) or put a module there (nn.Identity())")
    layers = list(network._modules.values())
    repeated = [name for name, layer in network._modules.items() if layers.count(layer) > 1]
    if repeated:
        raise ValueError(f"the same module is at several places of the stack ({', '.join(repeated)}): the energy "
                         "algorithms hold one state per layer, and PyTorch lists the module once; give each place "
                         "its own module (to share parameters, tie them: second.weight = first.weight)")


def warn_unrun_hooks(network: nn.Module) -> None:
    """Warn where module hooks would act in ``network``'s forward and backward but not in the
    energy algorithms, which never call the network as a whole (its forward hooks, pre-hooks and
    backward pre-hooks) and compute dense layers in closed form (global hooks): a hook that
    changes the stack's input, output or output gradient changes what bp trains, not what they
    estimate. Observers (profilers, loggers) change nothing, so this warns rather than refuses;
    hooks on a layer or inside one act (the layer then goes through autograd)."""
    own = (network._forward_hooks or network._forward_pre_hooks or network._backward_pre_hooks
           or network._backward_hooks)  # a legacy (non-full) backward hook acts on the last operation
    every = (_global_forward_hooks or _global_forward_pre_hooks or _global_backward_hooks
             or _global_backward_pre_hooks)
    where = "the network itself" if own else "every module (global hooks)" if every else None
    if where is not None:
        warnings.warn(f"module hooks are registered on {where}: the energy algorithms evaluate the "
                      "network one layer at a time and never call it as a whole, so these do not run; a hook that "
                      "changes the stack's input or output changes what bp trains but not what they estimate "
                      "(register it on a layer, a top-level child, where it runs)", UserWarning, stacklevel=4)


def layers_of(network: nn.Module) -> list[nn.Module]:
    """The layers (top-level children) of an energy network, checked to be a usable stack."""
    if not isinstance(network, nn.Sequential):
        raise TypeError(
            f"energy networks are nn.Sequential stacks of layers, got {type(network).__name__}; "
            "wrap your layers in nn.Sequential (each top-level child is one layer)"
        )
    if type(network).forward is not nn.Sequential.forward:
        raise TypeError(
            f"{type(network).__name__} overrides nn.Sequential.forward, but the energy algorithms "
            "compute its children one after another, another function than its forward: put what "
            "forward adds inside a layer (each top-level child is one layer)"
        )
    layers = [layer for _, layer in structure_of(network).children]
    if len(layers) != len(network._modules):  # named_children leaves out None entries and repeats
        check_entries(network)
    warn_unrun_hooks(network)
    if not layers:
        raise ValueError("the network has no layers")
    return layers


def compile_layers(network: nn.Module, **options: Any) -> nn.Module:
    """Compile each layer (top-level child) of ``network`` with ``torch.compile`` in place
    (``nn.Module.compile``: parameter names and checkpoints stay as they are) and return it.
    Inference calls every layer many times per batch on shapes that do not change, which is what
    compilation pays off on.

    - Buffer donation: the linearisations of the energy take several VJPs of one recorded
      forward pass of a layer (``retain_graph=True``), which AOTAutograd's buffer donation
      (inductor's default) forbids, so this turns donation off **for the whole process**
      (``torch._functorch.config.donated_buffer = False``, also for other models compiled in
      it): a backward pass then keeps its saved tensors instead of reusing their memory.
    - ep and chl: their Hopfield energies call the layers only for the feedforward pass that
      starts the free phase; every inference step goes through couplings that call the layers'
      parts (not compiled), or a layer without an activation itself, through ``torch.func``,
      where a compiled layer runs eagerly. Compiling leaves their steps as they are.
    - Only children that are called are compiled: a network whose children are containers
      without a ``forward`` of their own (``nn.ModuleList``) gets nothing compiled.
    - Recompile limit: layers of one class share the code of its ``forward``, for which torch
      keeps at most ``torch._dynamo.config.recompile_limit`` graphs (8) and then runs it
      eagerly, with a log line only; each layer needs a graph per input shape and grad mode it
      is called with (VGG-5 under every PC algorithm: 9). The limit is raised to at least 8 per
      layer compiled, process-wide.
    - A compiled layer is compiled in this process only: a deep copy or a pickled copy (the
      workers of ``ddp_spawn``) runs eagerly until compiled again (``EnergyModule`` does that in
      ``setup``).

    Args:
        options: ``torch.compile``'s keyword arguments, e.g. ``mode="reduce-overhead"`` (CUDA
            graphs on a GPU) or ``backend="eager"``.
    """
    import torch._dynamo
    import torch._functorch.config

    torch._functorch.config.donated_buffer = False
    layers = list(network.children())
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 8 * len(layers))
    for layer in layers:
        layer.compile(**options)
    return network


def feedforward(layers: Sequence[nn.Module], inputs: Tensor) -> list[Tensor]:
    """x_0 = inputs, x_l = layer_l(x_{l-1}); errors name the layer whose input did not fit."""
    activities = [inputs]
    for index, layer in enumerate(layers, start=1):
        try:  # no context manager: this is backprop's forward pass, on the hot path
            activities.append(layer(activities[-1]))
        except RuntimeError as error:
            raise_naming(error, layer, index, activities[-1])
    return activities


def raise_naming(error: RuntimeError, layer: nn.Module, index: int, x: Tensor) -> None:
    """Raise a shape error of layer ``index`` as one that names it and the shapes; any other
    error as it is."""
    if any(word in str(error) for word in ("shape", "size", "dimension")):
        raise ValueError(f"layer {index} ({describe(layer)}) cannot take an input of shape "
                         f"{tuple(x.shape)}: {error}") from error
    raise error


def describe(layer: nn.Module) -> str:
    """The layer's repr on one line, cut at 120 characters."""
    text = " ".join(repr(layer).split())
    return text if len(text) <= 120 else text[:117] + "..."
