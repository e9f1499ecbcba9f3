"""``pl-energy test/predict --ckpt_path``: the checkpoint's algorithm, network and data module,
as ``EnergyModule.load_from_checkpoint`` restores them; configs and loggers that show every
hyper-parameter; saved configs that re-run where told."""

from __future__ import annotations

import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from lightning_helpers import REPO
from pl_energy import EnergyModule
from pl_energy.cli import make_cli

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Runs without a root dir (test, predict) write their config.yaml into the working directory."""
    monkeypatch.chdir(tmp_path)


def _fit(tmp_path, *arguments: str) -> tuple:
    cli = make_cli(["fit", *arguments, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
                    "--trainer.default_root_dir", str(tmp_path / "fit"), "--agreement.every_n_steps", "0",
                    "--model.trace_every_n_steps", "0", *QUIET])
    return cli, cli.trainer.checkpoint_callback.best_model_path


def _python_test(checkpoint: str, datamodule, batches: int) -> dict[str, float]:
    """The oracle: Lightning's own restore and test loop, without the CLI."""
    module = EnergyModule.load_from_checkpoint(checkpoint)
    trainer = Trainer(logger=False, limit_test_batches=batches, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    trainer.test(module, datamodule=datamodule)
    return {key: float(value) for key, value in trainer.callback_metrics.items()}, module


def test_test_and_predict_of_an_ep_checkpoint_evaluate_ep_as_load_from_checkpoint(mnist_root, tmp_path, capsys):
    """The issue's case: ``test --ckpt_path`` of an ep checkpoint tested it as pc_nudge (36.7% for
    56.6%). Here no --algorithm is given: the checkpoint's ep with its beta and steps is used."""
    from pl_energy.data import MNISTDataModule

    data = ["--data.data_dir", str(mnist_root), "--data.limit_train", "64", "--data.batch_size", "16"]
    fit, checkpoint = _fit(tmp_path, "--algorithm", "ep", "--beta", "0.3", "--steps", "40",
                           "--model.sizes", "[784, 16, 10]", *data)
    cli = make_cli(["test", "--ckpt_path", checkpoint, "--data.data_dir", str(mnist_root),
                    "--trainer.limit_test_batches", "2", "--trainer.logger", "false", *QUIET])
    assert cli.model.algorithm == fit.model.algorithm  # ep, beta 0.3, 40 steps: not the default pc_nudge
    assert cli.datamodule.batch_size == 16 and cli.datamodule.limit_train == 64  # the checkpoint's data module
    expected, module = _python_test(checkpoint, MNISTDataModule(data_dir=mnist_root, batch_size=16, limit_train=64), 2)
    got = {key: float(value) for key, value in cli.trainer.callback_metrics.items()}
    assert got == pytest.approx(expected, rel=1e-6) and set(got) == {"test/loss", "test/acc"}

    # predict: the outputs of the same module on the same batches
    make_cli(["predict", "--ckpt_path", checkpoint, "--data.data_dir", str(mnist_root),
              "--trainer.limit_predict_batches", "2", "--trainer.default_root_dir", str(tmp_path / "predict"),
              "--trainer.logger", "false", *QUIET])
    (saved,) = (tmp_path / "predict").rglob("predictions.pt")
    outputs = torch.load(saved)["outputs"]
    datamodule = MNISTDataModule(data_dir=mnist_root, batch_size=16, limit_train=64)
    datamodule.setup("predict")
    batches = iter(datamodule.predict_dataloader())
    inputs = torch.cat([next(batches)[0] for _ in range(2)])
    # each batch's free phase stops where the residual of that batch reaches ep's tol of 1e-6,
    # so the same samples relaxed in another batch agree to a few times the tolerance
    assert outputs.shape == (32, 10) and torch.allclose(outputs, module(inputs), rtol=0, atol=1e-5)

    # a value given on the command line is used, and said
    capsys.readouterr()
    cli = make_cli(["test", "--ckpt_path", checkpoint, "--beta", "0.1", "--data.data_dir", str(mnist_root),
                    "--trainer.limit_test_batches", "1", "--trainer.logger", "false", *QUIET])
    assert cli.model.algorithm.beta == 0.1 and cli.model.algorithm.steps == 40
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "restored, except as given" in line]
    assert "model.algorithm.init_args.beta=0.1 (checkpoint: 0.3)" in line and "steps" not in line


def test_a_cifar_cnn_checkpoint_restores_its_network_and_data_module(tmp_path):
    """``test --ckpt_path`` of a CIFAR-10 VGG checkpoint loaded MNIST and failed inside conv2d."""
    from data_fixtures import write_cifar
    from pl_energy.data import CIFAR10DataModule

    write_cifar(tmp_path, "CIFAR10DataModule")
    fit, checkpoint = _fit(tmp_path, "--config", str(REPO / "configs" / "cifar10_vgg5_pc_nudge.yaml"),
                           "--model.network.init_args.width", "0.03125", "--data.data_dir", str(tmp_path),
                           "--data.val_size", "50", "--data.batch_size", "16", "--data.num_workers", "0",
                           "--data.augment", "false")
    cli = make_cli(["test", "--ckpt_path", checkpoint, "--data.data_dir", str(tmp_path),
                    "--trainer.limit_test_batches", "2", "--trainer.logger", "false", *QUIET])
    assert type(cli.datamodule) is CIFAR10DataModule and cli.datamodule.batch_size == 16
    assert type(cli.model.network).__name__ == "VGG"
    expected, _ = _python_test(checkpoint, CIFAR10DataModule(data_dir=tmp_path, val_size=50, batch_size=16,
                                                             augment=False), 2)
    got = {key: float(value) for key, value in cli.trainer.callback_metrics.items()}
    assert got == pytest.approx(expected, rel=1e-6)


def _algorithm_section(config: dict) -> dict:
    return config["model"]["algorithm"] if "model" in config else config["algorithm"]


@pytest.mark.parametrize("name, flags", [("pc_nudge", ["--lam", "0.02"]), ("ep", ["--beta", "0.25"])])
def test_configs_and_loggers_hold_every_hyperparameter(name, flags, mnist_root, tmp_path):
    pytest.importorskip("tensorboard")
    loggers = ('[{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "%s"}}, '
               '{"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "%s", '
               '"name": "tb"}}]' % (tmp_path, tmp_path))
    cli, _ = _fit(tmp_path, "--algorithm", name, *flags, "--model.sizes", "[784, 16, 10]",
                  "--data.data_dir", str(mnist_root), "--data.limit_train", "64", "--data.batch_size", "16",
                  "--trainer.logger", loggers)
    used = cli.model.algorithm.hparams()  # what ran: the oracle
    assert used[flags[0][2:]] == float(flags[1])
    runs = [tmp_path / "lightning_logs" / "version_0", tmp_path / "tb" / "version_0"]
    files = {"config.yaml": runs[0] / "config.yaml", "CSV hparams.yaml": runs[0] / "hparams.yaml",
             "TensorBoard hparams.yaml": runs[1] / "hparams.yaml"}
    for what, path in files.items():
        section = _algorithm_section(yaml.safe_load(path.read_text()))
        assert section["class_path"].endswith(type(cli.model.algorithm).__name__), what
        assert section["init_args"] == used, what
    for key in ("solver", "steps", "tol", "lam" if name == "pc_nudge" else "beta"):
        assert used[key] is not None
    config = yaml.safe_load(files["config.yaml"].read_text())
    assert "lam" not in config and "algorithm" not in config  # the shorthands are expanded, not kept


def test_a_saved_config_reruns_into_the_root_dir_given(mnist_root, tmp_path):
    first, _ = _fit(tmp_path, "--algorithm", "bp", "--model.sizes", "[784, 16, 10]", "--data.data_dir",
                    str(mnist_root), "--data.limit_train", "64", "--data.batch_size", "16")
    saved = tmp_path / "fit" / "lightning_logs" / "version_0" / "config.yaml"
    assert saved.is_file()
    for _ in range(2):
        cli = make_cli(["fit", "--config", str(saved), "--trainer.default_root_dir", str(tmp_path / "new")])
        assert cli.trainer.global_step == 2 and cli.model.algorithm.name == "bp"
    assert sorted(p.name for p in (tmp_path / "new" / "lightning_logs").iterdir()) == ["version_0", "version_1"]
    assert all((tmp_path / "new" / "lightning_logs" / v / "config.yaml").is_file() for v in ("version_0", "version_1"))
    assert [p.name for p in (tmp_path / "fit" / "lightning_logs").iterdir()] == ["version_0"]  # the old run untouched


def test_another_algorithm_at_test_time_keeps_the_trained_units(mnist_root, tmp_path):
    """An ep checkpoint (its MLP has clip units, ep's default) tested with --algorithm bp was
    evaluated on a ReLU network (bp's default: 0.7715 against 1.0131 on the trained one), silently;
    load_from_checkpoint(..., algorithm="bp") likewise. The trained units stay, and the numbers
    are the trained network's, by a forward pass written here."""
    from pl_energy.data import MNISTDataModule

    data = ["--data.data_dir", str(mnist_root), "--data.limit_train", "64", "--data.batch_size", "16"]
    _, checkpoint = _fit(tmp_path, "--algorithm", "ep", "--model.sizes", "[784, 16, 10]", *data)
    cli = make_cli(["test", "--ckpt_path", checkpoint, "--algorithm", "bp", "--data.data_dir", str(mnist_root),
                    "--trainer.limit_test_batches", "2", "--trainer.logger", "false", *QUIET])
    loaded = EnergyModule.load_from_checkpoint(checkpoint, algorithm="bp")
    for module in (cli.model, loaded):
        assert module.algorithm.name == "bp" and type(module.network[0][1]).__name__ == "Clip"
    weights = torch.load(checkpoint, weights_only=True)["state_dict"]
    datamodule = MNISTDataModule(data_dir=mnist_root, batch_size=16, limit_train=64)
    datamodule.setup("test")
    batches = iter(datamodule.test_dataloader())
    losses = []
    for _ in range(2):
        x, y = next(batches)
        hidden = (x @ weights["network.0.0.weight"].t() + weights["network.0.0.bias"]).clamp(0, 1)  # clip units
        losses.append(torch.nn.functional.cross_entropy(hidden @ weights["network.1.weight"].t()
                                                        + weights["network.1.bias"], y))
    assert float(cli.trainer.callback_metrics["test/loss"]) == pytest.approx(float(torch.stack(losses).mean()), rel=1e-5)


def test_resuming_fit_with_another_optimiser_setting_is_refused(mnist_root, tmp_path, capsys):
    """fit --ckpt_path restores the optimiser's state, learning rate included: a learning rate
    given with it was reported as applied and trained at the checkpoint's, silently."""
    data = ["--data.data_dir", str(mnist_root), "--data.limit_train", "64", "--data.batch_size", "16"]
    _, checkpoint = _fit(tmp_path, "--algorithm", "bp", "--model.sizes", "[784, 16, 10]", "--model.optimizer",
                         "torch.optim.Adam", "--model.optimizer.init_args.lr", "0.001", *data)
    with pytest.raises(SystemExit):
        make_cli(["fit", "--ckpt_path", checkpoint, "--model.optimizer.init_args.lr", "0.05", "--trainer.max_steps",
                  "4", "--trainer.default_root_dir", str(tmp_path / "resumed"), *QUIET])
    assert ("fit --ckpt_path resumes the checkpoint's optimiser and scheduler in their saved state, learning rate "
            "included, so model.optimizer.init_args.lr=0.05 (checkpoint: 0.001) would not take effect"
            in capsys.readouterr().err)


def test_a_data_module_named_on_the_command_line_is_used_even_the_default_one(mnist_root, tmp_path, capsys):
    """A Fashion-MNIST checkpoint (MNIST's files under Fashion-MNIST's folder) tested with
    ``--data pl_energy.data.MNISTDataModule`` was tested on Fashion-MNIST, without a word:
    jsonargparse names the default class where only its arguments are given, so a default class
    given was taken for one implied. Given, it replaces the checkpoint's and is said; arguments
    alone keep the checkpoint's class."""
    from pl_energy.data import FashionMNISTDataModule, MNISTDataModule

    (tmp_path / "FashionMNIST").mkdir()
    (tmp_path / "FashionMNIST" / "raw").symlink_to(mnist_root / "MNIST" / "raw")
    _, checkpoint = _fit(tmp_path, "--algorithm", "bp", "--model.sizes", "[784, 16, 10]", "--data",
                         "pl_energy.data.FashionMNISTDataModule", "--data.data_dir", str(tmp_path),
                         "--data.limit_train", "64", "--data.batch_size", "16")
    capsys.readouterr()
    for named, expected in ((["--data", "pl_energy.data.MNISTDataModule", "--data.data_dir", str(mnist_root)],
                             MNISTDataModule), (["--data.batch_size", "8"], FashionMNISTDataModule)):
        cli = make_cli(["test", "--ckpt_path", checkpoint, *named, "--trainer.limit_test_batches", "1",
                        "--trainer.logger", "false", *QUIET])
        assert type(cli.datamodule) is expected
    (line, _) = [line for line in capsys.readouterr().err.splitlines() if "restored, except as given" in line]
    assert "data.class_path='pl_energy.data.MNISTDataModule' (checkpoint: 'pl_energy.data.FashionMNISTDataModule')" in line
