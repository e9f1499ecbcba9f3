"""EnergyModule: manual optimisation of any algorithm, logging, float64, checkpoint resume."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_helpers import flat_parameters, loader, quiet_trainer
from pl_energy import ALGORITHMS, build_algorithm, mlp
from pl_energy.callbacks import GradientAgreement
from pl_energy.data import MNISTDataModule
from pl_energy.module import EnergyModule


def sgd(lr):
    return lambda params: torch.optim.SGD(params, lr=lr)


def test_unknown_algorithm_lists_valid_names():
    with pytest.raises(ValueError) as error:
        EnergyModule(algorithm="nope")
    for name in ALGORITHMS:
        assert name in str(error.value)


def test_unknown_hyperparameter_is_rejected():
    with pytest.raises(TypeError, match="beta"):
        EnergyModule(algorithm="pc_nudge", algorithm_hparams={"beta": 0.1})


def test_default_module_is_seed_003_setup():
    module = EnergyModule()
    assert module.algorithm_name == "pc_nudge" and module.automatic_optimization is False
    assert [m.out_features for m in module.network.modules() if isinstance(m, torch.nn.Linear)] == [128, 64, 10]
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == 0.001 and optimizer.defaults["momentum"] == 0.9


@pytest.mark.parametrize("algorithm", ["bp", "pc_nudge", "ep"])
def test_one_step_applies_the_estimate(algorithm):
    """After one Trainer step the weights moved by exactly -lr * estimate (float64, plain SGD)."""
    torch.manual_seed(0)
    x, y = torch.rand(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    hparams = {"steps": 5} if algorithm in ("pc_nudge", "ep") else {}
    network = mlp([6, 5, 3]).double()
    start = {k: v.clone() for k, v in network.state_dict().items()}
    expected = build_algorithm(algorithm, **hparams).estimate(network, x, y).gradients
    module = EnergyModule(network=network, algorithm=algorithm, algorithm_hparams=hparams,
                          optimizer=sgd(0.5), trace_every_n_steps=0)
    quiet_trainer(max_steps=1).fit(module, loader(x, y, 8))
    for name, p in module.network.named_parameters():
        torch.testing.assert_close(p.detach(), start[name] - 0.5 * expected[name], rtol=0, atol=1e-12)


def test_validate_and_test_predict_with_the_algorithm():
    torch.manual_seed(0)
    x, y = torch.rand(24, 6, dtype=torch.float64), torch.randint(0, 3, (24,))
    module = EnergyModule(network=mlp([6, 5, 3]).double(), algorithm="ep",
                          algorithm_hparams={"steps": 5}, trace_every_n_steps=0, evaluate_initial_weights=True)
    trainer = quiet_trainer(max_steps=1)
    (val,) = trainer.validate(module, loader(x, y, 8), verbose=False)
    (test,) = trainer.test(module, loader(x, y, 8), verbose=False)
    expected = module.algorithm.predict(module.network, x)
    accuracy = float((expected.argmax(-1) == y).double().mean())
    assert val["val/acc"] == pytest.approx(accuracy) and test["test/acc"] == pytest.approx(accuracy)
    assert set(val) == {"val/loss", "val/acc"}
    batches = trainer.predict(module, loader(x, y, 8))  # class predictions, with the outputs
    assert torch.equal(torch.cat([b["predictions"] for b in batches]), expected.argmax(-1))
    torch.testing.assert_close(torch.cat([b["outputs"] for b in batches]), expected)


def test_energy_trace_logged_and_plotted(tmp_path):
    torch.manual_seed(0)
    x, y = torch.rand(16, 6), torch.randint(0, 3, (16,))
    module = EnergyModule(network=mlp([6, 5, 3]), algorithm="pc_nudge",
                          algorithm_hparams={"steps": 4, "solver": "gd", "tol": None},
                          trace_every_n_steps=2)
    trainer = quiet_trainer(max_steps=3, default_root_dir=tmp_path)
    trainer.fit(module, loader(x, y, 4))
    for key in ("energy/internal", "energy/supervised", "energy/total", "train/loss", "train/acc"):
        assert key in trainer.callback_metrics, key
    assert [step for step, _ in module.energy_traces] == [0, 2]
    step, trace = module.energy_traces[-1]
    assert len(trace["total"]) == 5  # step 0 + 4 inference steps
    pngs = sorted(p.name for p in (tmp_path / "energy").glob("*.png"))
    assert pngs == ["step_0000000.png", "step_0000002.png"]


def test_inference_diagnostics_reach_the_logger(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    x, y = torch.rand(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    module = EnergyModule(network=mlp([6, 5, 4, 3], activation="tanh").double(), algorithm="pc",
                          trace_every_n_steps=0)
    logger = CSVLogger(tmp_path, name="run")
    quiet_trainer(max_steps=4, logger=logger, log_every_n_steps=1).fit(module, loader(x, y, 4))
    rows = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for key in ("inference/steps", "inference/converged", "inference/residual", "inference/backoffs"):
        assert key in header, header
    column = {key: header.index(key) for key in ("inference/steps", "inference/converged", "inference/residual")}
    logged = [row.split(",") for row in rows[1:] if row.split(",")[column["inference/steps"]]]
    assert len(logged) == 4
    for row in logged:
        assert 1 <= float(row[column["inference/steps"]]) <= 100
        assert float(row[column["inference/converged"]]) == 1.0
        assert float(row[column["inference/residual"]]) <= 1e-4


def test_the_estimates_nudge_and_error_reach_the_logger(tmp_path):
    """pc_nudge logs the lam it chose on each batch and its worst layer's error bound, which
    is the estimate's distance from backprop's gradient on that batch (autograd, here)."""
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    x, y = torch.rand(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    network = mlp([6, 5, 4, 3], activation="tanh").double()
    module = EnergyModule(network=network, algorithm="pc_nudge", trace_every_n_steps=0)
    logger = CSVLogger(tmp_path, name="run")
    first = module.algorithm.estimate(network, x[:4], y[:4])
    reference = torch.autograd.grad(torch.nn.functional.cross_entropy(network(x[:4]), y[:4]), list(network.parameters()))
    worst = max(float(sum((first.gradients[n] - g).pow(2).sum() for n, g in zip(names, grads)).sqrt()
                      / sum(g.pow(2).sum() for g in grads).sqrt())
                for names, grads in _by_layer(network, reference))
    quiet_trainer(max_steps=4, logger=logger, log_every_n_steps=1).fit(module, loader(x, y, 4))
    rows = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    nudge, error = header.index("estimate/nudge"), header.index("estimate/worst_error")
    logged = [row.split(",") for row in rows[1:] if row.split(",")[nudge]]
    assert len(logged) == 4 and all(0 < float(row[nudge]) < 1 for row in logged)
    assert float(logged[0][error]) == pytest.approx(worst, rel=1e-6)
    assert all(float(row[error]) < 1e-6 for row in logged)  # float64's step: far below any tolerance


def _by_layer(network, gradients):
    """(names, gradients) of each top-level layer, in named_parameters order."""
    named = list(zip((n for n, _ in network.named_parameters()), gradients))
    for layer, _ in network.named_children():
        yield zip(*[(n, g) for n, g in named if n.split(".")[0] == layer])


def test_z_il_matches_bp_for_200_mnist_steps_in_float64(mnist_root):
    """Z-IL is exact backprop: 200 SGD steps on real MNIST end within 1e-10 of BP's weights."""
    data = MNISTDataModule(data_dir=str(mnist_root), batch_size=64)
    weights = {}
    for algorithm in ("bp", "z_il"):
        pl.seed_everything(0, verbose=False)
        module = EnergyModule(network=mlp([784, 128, 64, 10]).double(), algorithm=algorithm,
                              optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
                              trace_every_n_steps=0)
        quiet_trainer(max_steps=200, limit_val_batches=0).fit(module, data)
        assert module.global_step == 200
        weights[algorithm] = flat_parameters(module)
    assert weights["bp"].dtype == torch.float64
    assert (weights["z_il"] - weights["bp"]).abs().max() <= 1e-10
    assert (weights["bp"] - flat_parameters(mlp([784, 128, 64, 10]))).abs().max() > 1e-3


def _resume_module(seed):
    pl.seed_everything(seed, verbose=False)
    return EnergyModule(
        network=mlp([784, 32, 10]), algorithm="pc_nudge", algorithm_hparams={"steps": 5},
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
        lr_scheduler_interval="step", trace_every_n_steps=0,
    )


def test_resume_from_checkpoint_continues_exactly(mnist_root, tmp_path):
    """fit 10 steps, checkpoint, resume to 20 == an uninterrupted 20-step run (shuffled MNIST:
    the epoch-1 order comes from the global RNG, which the checkpoint carries)."""
    data = MNISTDataModule(data_dir=str(mnist_root), batch_size=16, limit_train=2000)
    options = dict(limit_train_batches=10, limit_val_batches=0)

    straight = _resume_module(0)
    straight_agreement = GradientAgreement(every_n_steps=4, plot=False)
    quiet_trainer(max_epochs=2, callbacks=[straight_agreement], **options).fit(straight, data)

    first = _resume_module(0)
    trainer = quiet_trainer(max_epochs=1, callbacks=[GradientAgreement(every_n_steps=4, plot=False)],
                            **options)
    trainer.fit(first, data)
    assert first.global_step == 10
    checkpoint = tmp_path / "step10.ckpt"
    trainer.save_checkpoint(checkpoint)

    resumed = _resume_module(123)  # other seed: weights and RNG must come from the checkpoint
    resumed_agreement = GradientAgreement(every_n_steps=4, plot=False)
    resumed_trainer = quiet_trainer(max_epochs=2, callbacks=[resumed_agreement], **options)
    resumed_trainer.fit(resumed, data, ckpt_path=checkpoint)

    assert resumed.global_step == straight.global_step == 20
    assert torch.equal(flat_parameters(resumed), flat_parameters(straight))
    assert resumed.lr_schedulers().get_last_lr() == straight.lr_schedulers().get_last_lr()
    assert [r["step"] for r in resumed_agreement.history] == [0, 4, 8, 12, 16]
    assert resumed_agreement.history == straight_agreement.history


def test_a_checkpoint_loaded_for_another_algorithm_starts_from_its_defaults(tmp_path):
    """load_from_checkpoint(path, algorithm="ep") used to inherit pc_nudge's steps and lam."""
    torch.manual_seed(0)
    module = EnergyModule(network=mlp([6, 5, 3]).double(), algorithm="pc_nudge",
                          algorithm_hparams={"steps": 7, "lam": 0.02}, trace_every_n_steps=0)
    x, y = torch.rand(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(module, loader(x, y, 8))
    path = tmp_path / "pc_nudge.ckpt"
    trainer.save_checkpoint(path)
    with pytest.warns(UserWarning, match="trained with other settings than this run uses .algorithm: pc_nudge -> ep"):
        loaded = EnergyModule.load_from_checkpoint(path, network=mlp([6, 5, 3]).double(), algorithm="ep")
    assert loaded.algorithm.name == "ep" and loaded.algorithm.steps == 500 and loaded.algorithm.beta == 0.5
    same = EnergyModule.load_from_checkpoint(path, network=mlp([6, 5, 3]).double())
    assert same.algorithm.name == "pc_nudge" and (same.algorithm.steps, same.algorithm.lam) == (7, 0.02)


def test_accumulation_steps_every_k_batches_with_the_mean_estimate(tmp_path):
    """Oracle: k=2 accumulation equals one step on the mean of the two batches' BP gradients."""
    torch.manual_seed(0)
    x, y = torch.rand(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    module = EnergyModule(network=mlp([6, 5, 3]).double(), algorithm="bp", accumulate_grad_batches=2,
                          optimizer=lambda p: torch.optim.SGD(p, lr=0.5), trace_every_n_steps=0)
    start = [p.detach().clone() for p in module.network.parameters()]
    expected = [torch.zeros_like(p) for p in start]
    for chunk in (slice(0, 4), slice(4, 8)):
        grads = build_algorithm("bp").gradients(module.network, x[chunk], y[chunk])
        for e, g in zip(expected, grads.values()):
            e += g / 2
    seen = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(flat_parameters(pl_module.network))

    quiet_trainer(max_epochs=1, callbacks=[Watch()]).fit(module, loader(x, y, 4))
    assert torch.equal(seen[0], flat_parameters(torch.nn.ParameterList(start)))  # no step after batch 1
    for p, p0, g in zip(module.network.parameters(), start, expected):
        torch.testing.assert_close(p.detach(), p0 - 0.5 * g, rtol=0, atol=1e-12)


def test_clipping_bounds_the_applied_update():
    torch.manual_seed(0)
    x, y = torch.rand(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    module = EnergyModule(network=mlp([6, 5, 3]).double(), algorithm="z_il", gradient_clip_val=1e-3,
                          optimizer=lambda p: torch.optim.SGD(p, lr=1.0), trace_every_n_steps=0)
    start = flat_parameters(module.network)
    assert build_algorithm("z_il").gradients(module.network, x, y)["1.weight"].norm() > 1e-2  # would move more
    quiet_trainer(max_steps=1).fit(module, loader(x, y, 8))
    assert (flat_parameters(module.network) - start).norm() == pytest.approx(1e-3, rel=1e-4)  # torch adds 1e-6 to the norm


def test_the_cli_moves_clipping_and_accumulation_into_the_module():
    from pl_energy.cli import make_cli

    cli = make_cli(["--algorithm", "pc_nudge", "--trainer.gradient_clip_val", "0.5", "--trainer.accumulate_grad_batches",
                    "4", "--trainer.logger", "false"], run=False)
    assert (cli.model.gradient_clip_val, cli.model.accumulate_grad_batches) == (0.5, 4)
    assert cli.trainer.accumulate_grad_batches == 1 and cli.trainer.gradient_clip_val is None


@pytest.mark.parametrize("option, value", [("gradient_clip_val", 0.5), ("gradient_clip_val", 1.0),
                                           ("accumulate_grad_batches", 4)])
def test_trainer_clipping_and_accumulation_point_to_the_modules_arguments(option, value):
    """Lightning refuses these Trainer options under manual optimisation and says "switch to
    automatic optimization"; the module says what to write instead (clipping at 1.0 too, which
    was taken for accumulate_grad_batches' default)."""
    import lightning.pytorch as pl

    module = EnergyModule(network=mlp([4, 3, 2]), algorithm="bp", trace_every_n_steps=0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(8, 4), torch.randint(0, 2, (8,))),
                                       batch_size=4)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=1,
                         **{option: value})
    with pytest.raises(ValueError, match=rf"write EnergyModule\(\.\.\., {option}={value}\)"):
        trainer.fit(module, data)


def test_the_scheduler_interval_is_step_or_epoch():
    """Any other interval never stepped the scheduler, silently."""
    with pytest.raises(ValueError, match="lr_scheduler_interval must be 'step' or 'epoch', got 'steps'"):
        EnergyModule(network=mlp([4, 3, 2]), algorithm="bp", lr_scheduler_interval="steps")


def test_a_plateau_schedulers_metric_must_be_logged():
    """ReduceLROnPlateau whose metric is never logged never stepped, silently: a name no logged
    metric has is refused; a validation metric without validation is warned about; a logged one
    steps (its learning rate halves on a plateau of patience 0), also the training loss per step,
    which is not logged yet at the first step's scheduler call."""
    import functools

    plateau = functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0, factor=0.5, threshold=1.0)
    torch.manual_seed(0)
    x, y = torch.rand(16, 4), torch.randint(0, 2, (16,))

    def fit(monitor, validation, interval="epoch"):
        energy = EnergyModule(network=mlp([4, 3, 2]), algorithm="bp", optimizer=sgd(0.1), lr_scheduler=plateau,
                              lr_scheduler_monitor=monitor, lr_scheduler_interval=interval, trace_every_n_steps=0)
        quiet_trainer(max_epochs=2).fit(energy, loader(x, y, 8), loader(x, y, 8) if validation else None)
        return energy.optimizers().optimizer.param_groups[0]["lr"]

    with pytest.raises(ValueError, match=r"ReduceLROnPlateau monitors 'val_loss' .*which this run has not logged "
                                         r"\(logged: .*val/loss.*\): monitor one of those"):
        fit("val_loss", validation=True)
    with pytest.warns(UserWarning, match=r"monitors 'val/loss' .* so the learning rate did not change at this epoch: "
                                         "give a validation loader"):
        assert fit("val/loss", validation=False) == 0.1
    assert fit("val/loss", validation=True) == pytest.approx(0.025)  # halved after each of the two epochs
    assert fit("train/loss", validation=False) == pytest.approx(0.025)
    # per step, the training loss is logged after the first step's scheduler call: it waits a step
    assert fit("train/loss", validation=False, interval="step") == pytest.approx(0.1 * 0.5 ** 3)
