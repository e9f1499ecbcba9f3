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

from .algorithms import Algorithm, algorithm_class
from .algorithms.registry import REGISTRY, unknown_hyperparameters
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


def algorithm_type(spec: str) -> type[Algorithm]:
    """The algorithm class that ``spec`` names: a registered name (``ep``), a class name
    (``EquilibriumPropagation``) or an import path (``pl_energy.algorithms.EquilibriumPropagation``)."""
    if spec in REGISTRY:
        return REGISTRY[spec]
    for cls in REGISTRY.values():
        if spec in (cls.__name__, class_path(cls)):
            return cls
    if "." in spec:
        cls = import_object(spec)
        if isinstance(cls, type) and issubclass(cls, Algorithm):
            return cls
    return algorithm_class(spec)  # raises, listing the valid names


def algorithm_from(algorithm: Algorithm | str | dict[str, Any], hparams: dict[str, Any] | None = None) -> Algorithm:
    """An algorithm from an instance, a name (see :func:`algorithm_type`) or a ``{"class_path",
    "init_args"}`` description; ``hparams`` override the description's (or the defaults) and are
    refused, in one line, where the algorithm has no such hyper-parameter."""
    hparams = dict(hparams or {})
    if isinstance(algorithm, Algorithm):
        if hparams:
            raise TypeError("algorithm_hparams apply to an algorithm given by name or description, not to an "
                            f"instance: set them on the instance ({type(algorithm).__name__}(...))")
        return algorithm
    if isinstance(algorithm, dict) and "class_path" in algorithm:
        cls = algorithm_type(algorithm["class_path"])
        hparams = {**dict(algorithm.get("init_args") or {}), **hparams}
    elif isinstance(algorithm, str):
        cls = algorithm_type(algorithm)
    else:
        raise TypeError(f"expected an algorithm, its name or its {{'class_path', 'init_args'}} description, "
                        f"got {algorithm!r}")
    refusal = unknown_hyperparameters(cls.name, hparams)
    if refusal:
        raise TypeError(refusal)
    return cls(**hparams)


def describe_algorithm(algorithm: Algorithm) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of an algorithm with every hyper-parameter's value: what
    checkpoints, configs and loggers hold, and :func:`algorithm_from` builds back."""
    return {"class_path": class_path(type(algorithm)), "init_args": as_plain(algorithm.hparams())}
