"""Algorithms by name: ``build_algorithm("pc_nudge", lam=0.01)``."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from .base import Algorithm

#: The algorithms by name: every ``Algorithm`` subclass that sets ``name`` (``Algorithm.registered``).
REGISTRY: dict[str, type[Algorithm]] = Algorithm.registered


class _AlgorithmNames(Sequence):
    """The registered algorithms' names, in registration order, read when asked: an algorithm
    defined (and so registered) after ``pl_energy`` was imported is among them."""

    def __getitem__(self, index):
        return tuple(REGISTRY)[index]

    def __len__(self) -> int:
        return len(REGISTRY)

    def __repr__(self) -> str:
        return repr(tuple(REGISTRY))

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, list, _AlgorithmNames)) else other)

    __hash__ = None

    def __add__(self, other):
        return tuple(self) + tuple(other)

    def __radd__(self, other):
        return tuple(other) + tuple(self)


ALGORITHMS: Sequence[str] = _AlgorithmNames()


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
        own = (inspect.getdoc(klass) or "") if "__doc__" in vars(klass) else ""
        for field, text in _args_entries(own):
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


def unknown_hyperparameters(name: str, hparams: Mapping[str, Any]) -> str | None:
    """The one-line refusal of the names in ``hparams`` that algorithm ``name`` does not have
    (None when it has them all): ``build_algorithm`` raises it, the CLI prints it."""
    valid = list(hyperparameters_of(name))
    unknown = sorted(set(hparams) - set(valid))
    if not unknown:
        return None
    return (f"algorithm {name!r} has no hyper-parameter(s) {', '.join(unknown)}; its hyper-parameters "
            f"are: {', '.join(valid) or 'none'}")


def build_algorithm(name: str, **hparams: Any) -> Algorithm:
    """Instantiate algorithm ``name`` with hyper-parameters (unknown ones are rejected)."""
    cls = algorithm_class(name)
    refusal = unknown_hyperparameters(name, hparams)
    if refusal:
        raise TypeError(refusal)
    return cls(**hparams)
