"""Algorithms by name: ``build_algorithm("pc_nudge", lam=0.01)``."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any

from .base import Algorithm

#: The algorithms by name: every ``Algorithm`` subclass that sets ``name`` (``Algorithm.registered``).
REGISTRY: dict[str, type[Algorithm]] = Algorithm.registered
ALGORITHMS: tuple[str, ...] = tuple(REGISTRY)


def hyperparameters_of(name: str) -> dict[str, Any]:
    """The hyper-parameters of algorithm ``name`` with their defaults."""
    cls = algorithm_class(name)
    return {field.name: field.default for field in dataclasses.fields(cls)}


def hyperparameter_docs(name: str) -> dict[str, str]:
    """Each hyper-parameter of algorithm ``name`` with its ``Args:`` entry, read from the class's
    docstring or, for an inherited field, from the nearest base class that documents it."""
    cls = algorithm_class(name)
    docs: dict[str, str] = {}
    for klass in cls.__mro__:
        for field, text in _args_entries(inspect.getdoc(klass) or "" if "__doc__" in vars(klass) else ""):
            docs.setdefault(field, text)
    return {field.name: docs.get(field.name, "") for field in dataclasses.fields(cls)}


def hyperparameter_types(name: str) -> dict[str, Any]:
    """Each hyper-parameter of algorithm ``name`` with its type annotation."""
    cls = algorithm_class(name)
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def _args_entries(docstring: str) -> list[tuple[str, str]]:
    """The ``(name, text)`` entries of a Google-style ``Args:`` section."""
    match = re.search(r"^Args:\n((?:[ \t]+\S.*\n?)+)", docstring, flags=re.M)
    if not match:
        return []
    entries: list[tuple[str, str]] = []
    for line in match.group(1).splitlines():
        head = re.match(r"^ {4}([a-z_]\w*):\s*(.*)$", line)
        if head:
            entries.append((head.group(1), head.group(2)))
        elif entries:
            entries[-1] = (entries[-1][0], f"{entries[-1][1]} {line.strip()}")
    return entries


def algorithm_class(name: str) -> type[Algorithm]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown algorithm {name!r}; valid algorithms are: {', '.join(ALGORITHMS)}"
        ) from None


def build_algorithm(name: str, **hparams: Any) -> Algorithm:
    """Instantiate algorithm ``name`` with hyper-parameters (unknown ones are rejected)."""
    cls = algorithm_class(name)
    valid = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(hparams) - valid)
    if unknown:
        raise TypeError(
            f"algorithm {name!r} has no hyper-parameter(s) {unknown}; its hyper-parameters are "
            f"{sorted(valid) or 'none'}"
        )
    return cls(**hparams)
