"""``pc_negative``, the algorithm added as one file to show the contrastive family's contract.

Oracles: an identity (the mean of positive and negative nudging is centered nudging, exactly, on
the same relaxed states), backprop (the error vanishes linearly in lam, with the opposite sign
to positive nudging's) and the registry (one file made it a CLI algorithm).
"""

from __future__ import annotations

import math

import torch

import pl_energy
from pl_energy.metrics import agreement_metrics
from helpers import flat, relative_l2

SETTINGS = {"tol": 1e-12, "steps": 500}  # converged: the states, not the solver, are compared


def _net_and_batch():
    torch.manual_seed(0)
    network = pl_energy.mlp([20, 12, 8, 5], activation="tanh").double()
    return network, torch.rand(16, 20, dtype=torch.float64), torch.randint(0, 5, (16,))


def test_the_mean_of_positive_and_negative_nudging_is_centered_nudging():
    network, x, y = _net_and_batch()
    positive = pl_energy.build_algorithm("pc_nudge", lam=0.01, **SETTINGS).gradients(network, x, y)
    negative = pl_energy.build_algorithm("pc_negative", lam=0.01, **SETTINGS).gradients(network, x, y)
    centered = pl_energy.build_algorithm("pc_nudge", lam=0.01, centered=True, **SETTINGS).gradients(network, x, y)
    for key, value in centered.items():
        torch.testing.assert_close((positive[key] + negative[key]) / 2, value, rtol=0, atol=1e-12)


def test_its_error_vanishes_linearly_and_opposite_to_positive_nudging():
    network, x, y = _net_and_batch()
    exact = pl_energy.build_algorithm("bp").gradients(network, x, y)
    errors = []
    for lam in (0.04, 0.02, 0.01):
        negative = pl_energy.build_algorithm("pc_negative", lam=lam, **SETTINGS).gradients(network, x, y)
        positive = pl_energy.build_algorithm("pc_nudge", lam=lam, **SETTINGS).gradients(network, x, y)
        errors.append(relative_l2(negative, exact))
        assert agreement_metrics(flat(negative) - flat(exact), flat(positive) - flat(exact))["cosine"] < -0.99  # opposite biases
    slopes = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(0.9 < slope < 1.1 for slope in slopes), (errors, slopes)


def test_one_file_made_it_an_algorithm_of_the_library():
    from pl_energy.cli import hyperparameter_flags, make_cli

    assert "pc_negative" in pl_energy.ALGORITHMS
    assert "pc_negative" in hyperparameter_flags()["lam"][1]
    cli = make_cli(["--algorithm", "pc_negative", "--lam", "0.05", "--trainer.logger", "false"], run=False)
    assert cli.model.algorithm.lam == 0.05 and cli.model.algorithm.name == "pc_negative"
    # centered: the +lam/-lam contrast, i.e. the mean of the two one-sided estimates, each relaxed
    # on its own
    network, x, y = _net_and_batch()
    centered = pl_energy.build_algorithm("pc_negative", centered=True, lam=0.05, **SETTINGS).gradients(network, x, y)
    positive = pl_energy.build_algorithm("pc_nudge", lam=0.05, **SETTINGS).gradients(network, x, y)
    negative = pl_energy.build_algorithm("pc_negative", lam=0.05, **SETTINGS).gradients(network, x, y)
    for key, value in centered.items():
        torch.testing.assert_close(value, (positive[key] + negative[key]) / 2, rtol=0, atol=1e-12)
