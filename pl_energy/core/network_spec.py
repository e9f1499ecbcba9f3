"""Networks as plain data: a description a checkpoint can hold and ``torch.load(weights_only=True)``
can read, and the network built back from it.

A description is ``{"class_path": ..., "init_args": {...}}``, the form LightningCLI's configs
use, for the builders that record their arguments (``MLP``, ``ConvNet``: ``init_args``) and for
the ``torch.nn`` layers whose constructor arguments can be read back off the layer; a
``Sequential`` of them is ``{"class_path": "torch.nn.Sequential", "children": [...]}``. A
description is only returned once the network built from it has the same structure (``repr``)
and the same parameter and buffer shapes as the original; anything else (a custom module, a
layer with hidden state) has no description (``None``) and must be passed again when loading.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from torch import nn

SEQUENTIAL = "torch.nn.Sequential"


def describe_network(network: nn.Module) -> dict[str, Any] | None:
    """The description of ``network`` (see the module docstring), or None if it has none."""
    parameters = list(network.parameters())
    dtypes = {p.dtype for p in parameters}
    if len(dtypes) > 1 or not all(p.requires_grad for p in parameters):
        return None  # mixed dtypes or frozen parameters: a rebuilt network would differ
    if len(list(network.named_parameters(remove_duplicate=False))) > len(parameters):
        return None  # tied weights would come back untied
    try:
        description = _describe(network)
        with torch.device("meta"):
            rebuilt = build_network(description)
    except (TypeError, ValueError, AttributeError, ImportError, NotImplementedError, RuntimeError):
        return None
    same_shapes = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == {
        k: tuple(v.shape) for k, v in network.state_dict().items()}
    if repr(rebuilt) != repr(network) or not same_shapes:
        return None
    if dtypes and next(iter(dtypes)) != torch.float32:
        description["dtype"] = str(next(iter(dtypes))).removeprefix("torch.")
    return description


def build_network(description: dict[str, Any]) -> nn.Module:
    """The network a :func:`describe_network` (or a LightningCLI config) describes."""
    if not isinstance(description, dict) or "class_path" not in description:
        raise TypeError(f"a network description is a dict with a class_path, got {description!r}")
    cls = import_object(description["class_path"])
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"{description['class_path']} is not an nn.Module class")
    if "children" in description:
        network = cls(*[build_network(child) for child in description["children"]])
    else:  # lists (as YAML and JSON write them) go back as the tuples torch's layers keep
        network = cls(**{name: _tuples(value) for name, value in dict(description.get("init_args") or {}).items()})
    return network.to(getattr(torch, description["dtype"])) if "dtype" in description else network


def import_object(path: str) -> Any:
    """The object a dotted path names, e.g. ``torch.optim.Adam``."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def class_path(cls: type) -> str | None:
    """The dotted path :func:`import_object` finds ``cls`` by (None for a nested or local class)."""
    return None if "." in cls.__qualname__ else f"{cls.__module__}.{cls.__qualname__}"


def as_plain(value: Any) -> Any:
    """``value`` as plain data (numbers, strings, None, lists, string-keyed dicts), tuples as
    lists; a TypeError for anything else (a function, a tensor, a module)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        return [as_plain(item) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: as_plain(item) for key, item in value.items()}
    raise TypeError(f"{type(value).__name__} is not plain data")


def _describe(module: nn.Module) -> dict[str, Any]:
    path = class_path(type(module))
    if path is None:
        raise TypeError(f"{type(module).__qualname__} cannot be imported back")
    recorded = getattr(module, "init_args", None)
    if isinstance(recorded, dict):
        return {"class_path": path, "init_args": as_plain(recorded)}
    if type(module) is nn.Sequential:
        return {"class_path": SEQUENTIAL, "children": [_describe(child) for child in module.children()]}
    if not type(module).__module__.startswith(("torch.nn.", "pl_energy.")) or list(module.children()):
        raise TypeError(f"{path} cannot be described")
    init_args: dict[str, Any] = {}
    for name, parameter in inspect.signature(type(module).__init__).parameters.items():
        if name in ("self", "device", "dtype") or parameter.kind in (parameter.VAR_POSITIONAL,
                                                                       parameter.VAR_KEYWORD):
            continue
        if name == "bias" and hasattr(module, "bias"):
            init_args[name] = module.bias is not None
        elif hasattr(module, name):
            init_args[name] = as_plain(getattr(module, name))
        elif parameter.default is parameter.empty:
            raise TypeError(f"{path}'s argument {name} cannot be read back")
    return {"class_path": path, "init_args": init_args}


def _tuples(value: Any) -> Any:
    return tuple(_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value
