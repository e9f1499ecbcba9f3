"""DDP on CPU (gloo, ``ddp_spawn``, 2 processes): the synced update is the mean of the ranks'
estimates, so 2 ranks on batches of 8 equal 1 process on their union batch of 16."""

from __future__ import annotations

import functools

import pytest
import torch

from lightning_helpers import (DestroyProcessGroupAtExit, RankWeightSpread, flat_parameters, loader, mnist_subset,
                              quiet_trainer)
from pl_energy import mlp
from pl_energy.callbacks import GradientAgreement
from pl_energy.module import EnergyModule

pytestmark = pytest.mark.slow

PER_RANK, STEPS, WORLD = 8, 3, 2

CASES = {
    "bp": ([784, 16, 10], {}, "cross_entropy", False),
    "z_il": ([784, 16, 12, 10], {}, "cross_entropy", True),
    "pc_nudge": ([784, 16, 12, 10], {"lam": 0.01, "steps": 100}, "cross_entropy", True),
    # fixed steps: a tolerance or a momentum restart is decided for the whole batch, so with them
    # two half batches match their union only to the tolerance, not to rounding
    "ep": ([784, 12, 10], {"solver": "gd", "steps": 10, "step_size": 0.5, "tol": None, "beta": 0.1},
           "mse", False),
}
THRESHOLDS = {"z_il": 0.9999, "pc_nudge": 0.999}


def _fit(algorithm, data, devices):
    sizes, hparams, loss, agreement = CASES[algorithm]
    torch.manual_seed(0)
    module = EnergyModule(network=mlp(sizes).double(), algorithm=algorithm, algorithm_hparams=hparams,
                          loss=loss, trace_every_n_steps=0,
                          optimizer=functools.partial(torch.optim.SGD, lr=0.05))
    callbacks = [RankWeightSpread(), DestroyProcessGroupAtExit()]
    if agreement:
        callbacks.append(GradientAgreement(every_n_steps=1, plot=False))
    options = dict(max_steps=STEPS, callbacks=callbacks)
    if devices > 1:
        options.update(devices=devices, strategy="ddp_spawn")
    trainer = quiet_trainer(**options)
    if devices == 1:
        # Lightning's DistributedSampler always shuffles training data, with torch.randperm seeded
        # by seed 0 + epoch 0 and rank r taking perm[r::W]: step k of all ranks together holds
        # perm[16k:16k+16], which is batch k of the 1-process run on the data in perm order.
        perm = torch.randperm(len(data[0]), generator=torch.Generator().manual_seed(0))
        data = (data[0][perm], data[1][perm])
    trainer.fit(module, loader(*data, PER_RANK * (WORLD if devices == 1 else 1)))
    return module, trainer


@pytest.mark.parametrize("algorithm", list(CASES))
def test_two_processes_equal_one_on_the_union_batch(mnist_tensors, algorithm):
    # Different data per rank (DistributedSampler); the 1-process run sees their union per step.
    data = mnist_subset(mnist_tensors, PER_RANK * WORLD * STEPS)
    single, single_trainer = _fit(algorithm, data, devices=1)
    double, double_trainer = _fit(algorithm, data, devices=WORLD)

    assert float(double_trainer.callback_metrics["rank_weight_spread"]) == 0.0  # identical ranks
    start = torch.manual_seed(0) and flat_parameters(mlp(CASES[algorithm][0]).double())
    assert (flat_parameters(single) - start).abs().max() > 1e-4  # training moved the weights
    assert (flat_parameters(double) - flat_parameters(single)).abs().max() <= 1e-6

    if algorithm in THRESHOLDS:
        one, two = single_trainer.callback_metrics, double_trainer.callback_metrics
        keys = [k for k in one if k.startswith("agreement/")]
        assert "agreement/cosine" in keys and "agreement/cosine/0" in keys
        for key in keys:
            assert float(two[key]) == pytest.approx(float(one[key]), abs=1e-6), key
        assert float(two["agreement/cosine"]) >= THRESHOLDS[algorithm]
