"""A network's module tree, read once and checked at every use: its modules, named parameters
and top-level layers without a walk of Python generators per call.

``structure_of(network)`` gives what ``network.named_modules()``, ``network.named_parameters()``
and ``network.named_children()`` give (the same objects, in the same order, shared modules and
parameters listed once), kept per network while the network lives. Every call checks the cache
against the network's own registries, from the network down: each of its modules'
``_modules`` and ``_parameters`` must hold the same names, in the same order, bound to the same
objects as when it was read. A submodule or parameter added, removed, replaced or put back in
another order anywhere in the tree (``setattr``, ``register_parameter``, ``del``,
``Sequential.append``, a copy of the network) fails the check and the tree is read again (the
order matters: per-layer gradients are paired with the parameters in it).
``requires_grad`` is not part of the structure (callers read it at every use).

``checked_structure(network)`` checks once for a block that does not change the tree (one
estimate reads its network's structure 2 to 10 times): inside it, ``structure_of(network)``
returns the structure checked on entry.
"""

from __future__ import annotations

import operator
import weakref
from contextvars import ContextVar
from itertools import chain, repeat

from torch import nn

__all__ = ["Structure", "checked_structure", "structure_of"]

_MISSING = object()


class Structure:
    """The module tree of one network (see the module docstring).

    Attributes:
        submodules: (name, module) as ``network.named_modules()`` gives them after the network
            itself (which is not kept: the network stays collectable; ``named_modules`` adds it).
        named_parameters: (name, parameter) as ``network.named_parameters()`` gives them.
        children: (name, layer) as ``network.named_children()`` gives them.
        child_parameters: each child's ``parameters()``, in the order of ``children``.
    """

    def __init__(self, network: nn.Module):
        modules = list(network.named_modules())
        self.submodules = tuple(modules[1:])
        self.named_parameters = tuple(network.named_parameters())
        self.children = tuple(network.named_children())
        self.child_parameters = tuple(tuple(child.parameters()) for _, child in self.children)
        # every registry of the tree (the network's own first) and its size, and every entry
        # (registry, name, entry) as it was read
        self._root = (network._modules, network._parameters)
        self._own = tuple((module, module._modules, module._parameters) for _, module in modules[1:])
        registries = tuple(registry for _, module in modules for registry in (module._modules, module._parameters))
        self._registries, self._sizes = registries, tuple(map(len, registries))
        entries = [(registry, name, entry) for registry in registries for name, entry in registry.items()]
        self._owners, self._names, self._entries = (tuple(column) for column in zip(*entries)) if entries else ((),) * 3

    def named_modules(self, network: nn.Module) -> tuple[tuple[str, nn.Module], ...]:
        """``tuple(network.named_modules())`` (``network``: the one this structure is of)."""
        return (("", network), *self.submodules)

    def matches(self, network: nn.Module) -> bool:
        """Whether ``network`` still has exactly this tree (see the module docstring): every
        module still holds the registries read (``Sequential.__delitem__`` replaces its
        ``_modules``: ``del net[5:]`` leaves the old one untouched), and every registry still
        holds its names in order, bound to the same entries, and no others."""
        return (network._modules is self._root[0] and network._parameters is self._root[1]
                and all(module._modules is held and module._parameters is owned for module, held, owned in self._own)
                and tuple(map(len, self._registries)) == self._sizes
                and tuple(chain.from_iterable(self._registries)) == self._names  # every name, in order
                and all(map(operator.is_, map(dict.get, self._owners, self._names, repeat(_MISSING)), self._entries)))

    @property
    def first_parameter(self) -> nn.Parameter | None:
        """``next(network.parameters(), None)``."""
        return self.named_parameters[0][1] if self.named_parameters else None


#: the structure of each live network (the values do not hold the network: it stays collectable)
_STRUCTURES: "weakref.WeakKeyDictionary[nn.Module, Structure]" = weakref.WeakKeyDictionary()


#: (network, its structure) while a ``checked_structure`` block of that network runs
_CHECKED: "ContextVar[tuple[nn.Module, Structure] | None]" = ContextVar("checked_structure", default=None)


def structure_of(network: nn.Module) -> Structure:
    """The network's ``Structure``, read again only when its tree changed (not checked inside
    a ``checked_structure`` block of the same network)."""
    checked = _CHECKED.get()
    if checked is not None and checked[0] is network:
        return checked[1]
    known = _STRUCTURES.get(network)
    if known is not None and known.matches(network):
        return known
    _STRUCTURES[network] = structure = Structure(network)
    return structure



class checked_structure:
    """A block in which ``network``'s tree does not change: its structure is checked on entry
    (and returned) and ``structure_of(network)`` returns that one inside without checking it
    again (the block's caller promises the tree stays; one estimate reads it 2 to 10 times)."""

    def __init__(self, network: nn.Module):
        self.network = network

    def __enter__(self) -> Structure:
        structure = structure_of(self.network)
        self._token = _CHECKED.set((self.network, structure))
        return structure

    def __exit__(self, *exception) -> None:
        _CHECKED.reset(self._token)
