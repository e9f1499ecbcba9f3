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

from torch import nn

SEQUENTIAL = "torch.nn.Sequential"


def describe_network(network: nn.Module) -> dict[str, Any] | None:
    """The description of ``network`` (see the module docstring), or None if it has none."""
    try:
        description = _describe(network)
        rebuilt = build_network(description)
    except (TypeError, ValueError, AttributeError, ImportError):
        return None
    same_shapes = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == {
        k: tuple(v.shape) for k, v in network.state_dict().items()}
    return description if repr(rebuilt) == repr(network) and same_shapes else None


def build_network(description: dict[str, Any]) -> nn.Module:
    """The network a :func:`describe_network` (or a LightningCLI config) describes."""
    if not isinstance(description, dict) or "class_path" not in description:
        raise TypeError(f"a network description is a dict with a class_path, got {description!r}")
    cls = _import(description["class_path"])
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"{description['class_path']} is not an nn.Module class")
    if "children" in description:
        return cls(*[build_network(child) for child in description["children"]])
    # lists (as YAML and JSON write them) go back as the tuples torch's layers keep
    return cls(**{name: _tuples(value) for name, value in dict(description.get("init_args") or {}).items()})


def _describe(module: nn.Module) -> dict[str, Any]:
    path = f"{type(module).__module__}.{type(module).__qualname__}"
    recorded = getattr(module, "init_args", None)
    if isinstance(recorded, dict):
        return {"class_path": path, "init_args": dict(recorded)}
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
            init_args[name] = _plain(getattr(module, name))
        elif parameter.default is parameter.empty:
            raise TypeError(f"{path}'s argument {name} cannot be read back")
    return {"class_path": path, "init_args": init_args}


def _plain(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    raise TypeError(f"{type(value).__name__} is not plain data")


def _tuples(value: Any) -> Any:
    return tuple(_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)
