"""The module's constructor arguments as plain data, so that a checkpoint restores the whole run.

Lightning saves a module's ``__init__`` arguments in the checkpoint (``save_hyperparameters``)
and passes them back in ``load_from_checkpoint``. The network, optimiser and scheduler are
objects; here they become the ``{"class_path": ..., "init_args": {...}}`` descriptions of
LightningCLI's configs, which a checkpoint can hold, ``torch.load(weights_only=True)`` can read,
loggers (W&B's run config) can show, and :class:`~pl_energy.module.EnergyModule` builds back.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from torch import nn

from .core.network_spec import as_plain, build_network, class_path, describe_network, import_object


def describe_factory(factory: Any) -> dict[str, Any] | None:
    """The description of an optimiser or scheduler factory, or None if it has none.

    A class, ``functools.partial(cls, **kwargs)`` with plain keyword values and LightningCLI's
    own descriptions can be described; a lambda, a function, or a partial holding one (a
    ``LambdaLR``'s ``lr_lambda``) cannot.
    """
    if isinstance(factory, dict) and "class_path" in factory:
        return factory
    if isinstance(factory, functools.partial) and isinstance(factory.func, type) and not factory.args:
        path = class_path(factory.func)
        try:
            return None if path is None else {"class_path": path, "init_args": as_plain(dict(factory.keywords))}
        except TypeError:
            return None
    if isinstance(factory, type) and class_path(factory) is not None:
        return {"class_path": class_path(factory), "init_args": {}}
    return None


def factory_from(description: Any) -> Callable | None:
    """An optimiser or scheduler factory (``params -> optimiser``) from its description; a
    callable or None is returned as it is."""
    if description is None or callable(description):
        return description
    if isinstance(description, dict) and "class_path" in description:
        return functools.partial(import_object(description["class_path"]), **dict(description.get("init_args") or {}))
    raise TypeError(f"expected a callable or a {{'class_path': ..., 'init_args': ...}} dict, got {description!r}")


def network_from(network: Any) -> nn.Module | None:
    """A network from a module, its description, or None."""
    if network is None or isinstance(network, nn.Module):
        return network
    return build_network(network)


def plain_arguments(network: Any, optimizer: Any, lr_scheduler: Any) -> tuple[Any, Any, Any]:
    """The network, optimiser and scheduler as the checkpoint keeps them: their descriptions,
    None where there is none."""
    return tuple(value if value is None or (isinstance(value, dict) and "class_path" in value) else describe(value)
                 for value, describe in ((network, describe_network), (optimizer, describe_factory),
                                         (lr_scheduler, describe_factory)))
