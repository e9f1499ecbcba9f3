"""pl_energy.core.structure: the cached module tree against torch's own walks, after every kind of
change to the tree."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch
from torch import nn

import pl_energy
from pl_energy import mlp
from pl_energy.core.structure import checked_structure, structure_of


def _agrees_with_torch(network: nn.Module) -> None:
    structure = structure_of(network)
    assert structure.named_modules(network) == tuple(network.named_modules())
    assert structure.named_parameters == tuple(network.named_parameters())
    assert structure.children == tuple(network.named_children())
    assert structure.child_parameters == tuple(tuple(child.parameters()) for child in network.children())
    assert structure.first_parameter is next(network.parameters(), None)


def test_read_once_while_the_tree_is_unchanged():
    network = mlp([6, 5, 4, 3])
    first = structure_of(network)
    _agrees_with_torch(network)
    with torch.no_grad():
        network[0][0].weight.mul_(2)  # values and requires_grad are not structure
    network[1][0].bias.requires_grad_(False)
    assert structure_of(network) is first


def _reorder(module: nn.Module) -> None:
    """Remove a module's parameters and put them back under the same names, last first."""
    parameters = list(module._parameters.items())
    for name, _ in parameters:
        delattr(module, name)
    for name, parameter in reversed(parameters):
        module.register_parameter(name, parameter)


def test_every_change_of_the_tree_is_read_again():
    network = mlp([6, 5, 4, 3])
    changes = [
        lambda: network.append(nn.Linear(3, 2)),                                    # a layer added
        lambda: setattr(network[0][0], "weight", nn.Parameter(torch.zeros(5, 6))),  # replaced
        lambda: delattr(network[1][0], "bias"),                                     # removed
        lambda: network[1][0].register_parameter("bias", nn.Parameter(torch.zeros(4))),  # put back
        lambda: network[0].register_parameter("scale", nn.Parameter(torch.ones(()))),    # added deep down
        lambda: setattr(network[0], "0", nn.Linear(6, 5)),                          # a submodule replaced
        lambda: network.__delitem__(-1),                                            # a layer removed
        lambda: network[0].register_parameter("scale", None),                       # an entry set to None
        lambda: network[0].__delitem__(slice(5, None)),  # nothing removed, but a new registry
        lambda: network[0].append(nn.Linear(5, 5)),                                 # added to it
        lambda: _reorder(network[1][0]),                       # the same parameters in another order
    ]
    for change in changes:
        before = structure_of(network)
        change()
        assert structure_of(network) is not before
        _agrees_with_torch(network)


def test_copies_and_shared_modules():
    network = mlp([6, 5, 4, 3])
    structure_of(network)
    clone = copy.deepcopy(network)
    _agrees_with_torch(clone)
    assert structure_of(clone).first_parameter is not structure_of(network).first_parameter
    shared = nn.Linear(4, 4)
    tied = nn.Sequential(shared, nn.ReLU(), shared)  # listed once, as torch lists it
    _agrees_with_torch(tied)
    assert len(structure_of(tied).named_parameters) == 2


def test_checked_once_inside_a_block_and_again_after_it():
    network, other = mlp([6, 5, 4, 3]), mlp([6, 5, 3])
    structure_of(other)
    with checked_structure(network) as structure:
        with mock.patch("pl_energy.core.structure.Structure.matches", side_effect=AssertionError("checked")):
            assert structure_of(network) is structure  # inside: not checked again
            with pytest.raises(AssertionError, match="checked"):
                structure_of(other)  # another network is checked as ever
        with checked_structure(other) as inner:  # nested blocks restore the outer one
            assert structure_of(other) is inner
        assert structure_of(network) is structure
    network.append(nn.Linear(3, 2))  # after the block: the change is read
    assert structure_of(network) is not structure
    _agrees_with_torch(network)


def test_an_estimate_checks_its_network_once():
    network = mlp([6, 5, 4, 3])
    inputs, targets = torch.randn(8, 6), torch.randint(0, 3, (8,))
    calls = []
    original = type(structure_of(network)).matches
    with mock.patch("pl_energy.core.structure.Structure.matches",
                    autospec=True, side_effect=lambda self, net: calls.append(net) or original(self, net)):
        for name in ("bp", "pc_nudge", "z_il"):
            calls.clear()
            pl_energy.build_algorithm(name).estimate(network, inputs, targets)
            assert calls == [network], name
