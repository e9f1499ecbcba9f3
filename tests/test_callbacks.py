"""GradientAgreement: agreement of the applied update with the reference gradient."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lightning_helpers import loader, mnist_subset, quiet_trainer
from pl_energy import mlp
from pl_energy.callbacks import GradientAgreement, agreement_metrics
from pl_energy.module import EnergyModule

KEYS = ("cosine", "rel_error", "sign", "norm_ratio")


def test_agreement_metrics():
    u = torch.tensor([1.0, -2.0, 3.0])
    assert agreement_metrics(u, u) == {"cosine": 1.0, "rel_error": 0.0, "sign": 1.0, "norm_ratio": 1.0}
    opposite = agreement_metrics(-2 * u, u)
    assert opposite["cosine"] == pytest.approx(-1.0) and opposite["sign"] == 0.0
    assert opposite["rel_error"] == pytest.approx(3.0) and opposite["norm_ratio"] == pytest.approx(2.0)
    # exact zeros have no sign: they are left out, not counted as agreeing or disagreeing
    zeros = agreement_metrics(torch.tensor([0.0, 0.0, 1.0, -1.0]), torch.tensor([0.0, 1e-9, 2.0, 1.0]))
    assert zeros["sign"] == 0.5
    assert math.isnan(agreement_metrics(torch.zeros(3), torch.ones(3))["sign"])


def _run(mnist_tensors, algorithm, hparams, tmp_path, steps=3):
    x, y = mnist_subset(mnist_tensors, 32 * steps)
    torch.manual_seed(0)
    module = EnergyModule(network=mlp([784, 64, 32, 10]).double(), algorithm=algorithm,
                          algorithm_hparams=hparams, trace_every_n_steps=0,
                          optimizer=lambda p: torch.optim.SGD(p, lr=0.001, momentum=0.9))
    callback = GradientAgreement(every_n_steps=1)
    trainer = quiet_trainer(max_steps=steps, callbacks=[callback], default_root_dir=tmp_path)
    trainer.fit(module, loader(x, y, 32))
    return trainer, callback


# pc_nudge runs 100 inference steps of 0.1: with the default 50 the first layer's nudged
# equilibrium is not reached yet (its update is ~0.91 x BP's norm; global cosine ~0.9985 on
# Millidge et al. 2022's net at initialisation), with 100 the cosine is > 0.9999 here.
@pytest.mark.parametrize("algorithm, hparams, threshold", [
    ("z_il", {}, 0.9999),
    ("pc_nudge", {"lam": 0.01, "steps": 100}, 0.999),
])
def test_agreement_with_backprop_on_mnist(mnist_tensors, tmp_path, algorithm, hparams, threshold):
    trainer, callback = _run(mnist_tensors, algorithm, hparams, tmp_path)
    assert [row["step"] for row in callback.history] == [0, 1, 2]
    for row in callback.history:
        assert row["cosine"] >= threshold, row
        for layer in ("0", "1", "2"):
            assert row[f"cosine/{layer}"] >= threshold - 1e-3, (layer, row)
        # the worst layer is the layer with the largest relative error, and never below the
        # global one: sum_l |d_l|^2 = sum_l e_l^2 |r_l|^2 <= max_l e_l^2 sum_l |r_l|^2
        errors = {layer: row[f"rel_error/{layer}"] for layer in ("0", "1", "2")}
        assert row["worst_layer_rel_error"] == max(errors.values())
        assert errors[row["worst_layer"]] == max(errors.values())
        assert row["rel_error"] <= row["worst_layer_rel_error"] * (1 + 1e-12)
    metrics = trainer.callback_metrics
    for key in (*KEYS, "worst_layer_rel_error"):
        assert f"agreement/{key}" in metrics
    for key in KEYS:
        for layer in ("0", "1", "2"):
            assert f"agreement/{key}/{layer}" in metrics
    assert float(metrics["agreement/cosine"]) == pytest.approx(callback.history[-1]["cosine"], abs=1e-6)
    assert callback.plot_path is not None and callback.plot_path.is_file()
    assert callback.plot_path == tmp_path / "agreement.png"


def test_bp_agrees_exactly_and_every_n_steps(mnist_tensors, tmp_path):
    x, y = mnist_subset(mnist_tensors, 40)
    module = EnergyModule(network=mlp([784, 16, 10]).double(), algorithm="bp", trace_every_n_steps=0)
    callback = GradientAgreement(every_n_steps=2, per_layer=False, plot=False)
    quiet_trainer(max_steps=5, callbacks=[callback]).fit(module, loader(x, y, 8))
    assert [row["step"] for row in callback.history] == [0, 2, 4]
    assert all(math.isclose(row["cosine"], 1.0, abs_tol=1e-12) and row["rel_error"] < 1e-12
               and row["worst_layer_rel_error"] < 1e-12 for row in callback.history)
    assert not any("/" in key for row in callback.history for key in row)  # per_layer=False
    assert callback.state_dict() == {"history": callback.history}


def test_refuses_sharded_strategies_and_foreign_modules():
    from lightning.pytorch.strategies import FSDPStrategy

    callback = GradientAgreement()
    with pytest.raises(RuntimeError, match="FSDPStrategy"):
        callback.setup(SimpleNamespace(strategy=FSDPStrategy()), EnergyModule(), "fit")

    class DeepSpeedStrategy:  # stands in for lightning's (deepspeed is not installed)
        pass

    with pytest.raises(RuntimeError, match="DeepSpeedStrategy"):
        callback.setup(SimpleNamespace(strategy=DeepSpeedStrategy()), EnergyModule(), "fit")
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.strategies import SingleDeviceStrategy

    with pytest.raises(TypeError, match="EnergyModule"):
        callback.setup(SimpleNamespace(strategy=SingleDeviceStrategy("cpu")), BoringModel(), "fit")
    with pytest.raises(ValueError):
        GradientAgreement(every_n_steps=-1)


@pytest.mark.parametrize("network, algorithm, accumulate, threshold", [
    ("plain", "z_il", 3, 1 - 1e-12),      # the update averages 3 batches, and so does the reference
    ("dropout", "pc_nudge", 1, 0.999),    # one mask per batch, shared by the estimate and its reference
    ("batchnorm", "z_il", 2, 1 - 1e-12),
])
def test_agreement_under_accumulation_and_with_stateful_layers(mnist_tensors, network, algorithm, accumulate,
                                                               threshold):
    x, y = mnist_subset(mnist_tensors, 8 * 7)
    torch.manual_seed(0)
    inner = {"plain": torch.nn.Identity(), "dropout": torch.nn.Dropout(0.2), "batchnorm": torch.nn.BatchNorm1d(16)}
    net = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(784, 16), inner[network], torch.nn.Tanh()),
                              torch.nn.Linear(16, 10)).double()
    hparams = {"tol": 1e-10, "steps": 500} if algorithm == "pc_nudge" else {}
    module = EnergyModule(network=net, algorithm=algorithm, algorithm_hparams=hparams, trace_every_n_steps=0,
                          accumulate_grad_batches=accumulate, allow_constant_batch_statistics=network == "batchnorm")
    callback = GradientAgreement(every_n_steps=1, per_layer=False, plot=False)
    quiet_trainer(max_epochs=1, callbacks=[callback]).fit(module, loader(x, y, 8))
    assert len(callback.history) == -(-7 // accumulate)  # one per optimiser step, the last group shorter
    for row in callback.history:
        assert row["cosine"] >= threshold and row["norm_ratio"] == pytest.approx(1.0, abs=0.05), row


def test_agreement_reaches_the_csv_once_at_the_step_it_was_measured(mnist_tensors, tmp_path):
    """Before, a value measured every n steps was re-logged stale at later logging steps, the
    step-0 value was labelled step 49, and a run shorter than log_every_n_steps wrote none."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    x, y = mnist_subset(mnist_tensors, 8 * 7)
    torch.manual_seed(0)
    module = EnergyModule(network=mlp([784, 16, 10]).double(), algorithm="z_il", trace_every_n_steps=0)
    callback = GradientAgreement(every_n_steps=3, per_layer=False, plot=False)
    logger = CSVLogger(tmp_path, name="run")
    quiet_trainer(max_steps=7, callbacks=[callback], logger=logger, log_every_n_steps=50).fit(module, loader(x, y, 8))
    rows = [row for row in csv.DictReader(open(tmp_path / "run" / "version_0" / "metrics.csv"))
            if row.get("agreement/cosine")]
    assert [int(row["step"]) for row in rows] == [0, 3, 6] == [int(r["step"]) for r in callback.history]
    for row, measured in zip(rows, callback.history):
        assert float(row["agreement/cosine"]) == pytest.approx(measured["cosine"], abs=1e-12)


def test_epoch_summaries_are_the_min_and_mean_of_the_epochs_measurements(mnist_tensors, tmp_path):
    import csv

    from lightning.pytorch.loggers import CSVLogger

    x, y = mnist_subset(mnist_tensors, 8 * 4)
    torch.manual_seed(0)
    # lam = 0.01: cosines of 0.99..., which float32 aggregators rounded (0.999986858 read 0.999986887)
    module = EnergyModule(network=mlp([784, 16, 10]), algorithm="pc_nudge", algorithm_hparams={"lam": 0.01},
                          trace_every_n_steps=0)
    callback = GradientAgreement(every_n_steps=1, per_layer=False, plot=False)
    logger = CSVLogger(tmp_path, name="run")
    quiet_trainer(max_epochs=2, callbacks=[callback], logger=logger).fit(module, loader(x, y, 8))
    rows = list(csv.DictReader(open(tmp_path / "run" / "version_0" / "metrics.csv")))
    summaries = [row for row in rows if row.get("agreement/cosine_min")]
    assert [int(row["step"]) for row in summaries] == [4, 8]
    for epoch, row in enumerate(summaries):
        measured = callback.history[4 * epoch:4 * epoch + 4]
        cosines = [m["cosine"] for m in measured]
        errors = [m["rel_error"] for m in measured]
        worst = [m["worst_layer_rel_error"] for m in measured]
        assert float(row["agreement/worst_layer_rel_error_max"]) == pytest.approx(max(worst), rel=1e-12)
        assert float(row["agreement/worst_layer_rel_error_mean"]) == pytest.approx(sum(worst) / 4, rel=1e-12)
        assert float(row["agreement/cosine_min"]) == pytest.approx(min(cosines), rel=1e-12)
        assert float(row["agreement/cosine_mean"]) == pytest.approx(sum(cosines) / 4, rel=1e-12)
        assert float(row["agreement/rel_error_max"]) == pytest.approx(max(errors), rel=1e-12)
        assert float(row["agreement/rel_error_mean"]) == pytest.approx(sum(errors) / 4, rel=1e-12)
