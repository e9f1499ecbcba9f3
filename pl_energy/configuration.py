"""The module's constructor arguments as plain data, so that a checkpoint restores the whole run.

Lightning saves a module's ``__init__`` arguments in the checkpoint (``save_hyperparameters``)
and passes them back in ``load_from_checkpoint``. The network, optimiser and scheduler are
objects; here they become the ``{"class_path": ..., "init_args": {...}}`` descriptions of
LightningCLI's configs, which a checkpoint can hold, ``torch.load(weights_only=True)`` can read,
loggers (W&B's run config) can show, and :class:`~pl_energy.module.EnergyModule` builds back.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable

from torch import nn

from .core.network_spec import build_network, describe_network


def describe_factory(factory: Any) -> dict[str, Any] | None:
    """The description of an optimiser or scheduler factory, or None if it has none.

    A class, ``functools.partial(cls, **kwargs)`` and LightningCLI's own descriptions can be
    described; a lambda or a function cannot (its arguments are hidden in its code).
    """
    if isinstance(factory, dict) and "class_path" in factory:
        return factory
    if isinstance(factory, functools.partial) and isinstance(factory.func, type) and not factory.args:
        return {"class_path": _path_of(factory.func), "init_args": dict(factory.keywords)}
    if isinstance(factory, type):
        return {"class_path": _path_of(factory), "init_args": {}}
    return None


def factory_from(description: Any) -> Callable | None:
    """An optimiser or scheduler factory (``params -> optimiser``) from its description; a
    callable or None is returned as it is."""
    if description is None or callable(description):
        return description
    if isinstance(description, dict) and "class_path" in description:
        module, _, name = description["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return functools.partial(cls, **dict(description.get("init_args") or {}))
    raise TypeError(f"expected a callable or a {{'class_path': ..., 'init_args': ...}} dict, got {description!r}")


def network_from(network: Any) -> nn.Module | None:
    """A network from a module, its description, or None."""
    if network is None or isinstance(network, nn.Module):
        return network
    return build_network(network)


def plain_hyperparameters(hparams: dict[str, Any]) -> list[str]:
    """Replace the network, optimiser and scheduler in ``hparams`` by their descriptions, in
    place; returns the names of those that have none (set to None: pass them again to
    ``load_from_checkpoint``)."""
    missing = []
    for name, describe in (("network", describe_network), ("optimizer", describe_factory),
                           ("lr_scheduler", describe_factory)):
        value = hparams.get(name)
        if value is None or (isinstance(value, dict) and "class_path" in value):
            continue
        hparams[name] = describe(value)
        if hparams[name] is None:
            missing.append(name)
    return missing


def _path_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
