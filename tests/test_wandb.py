"""W&B: without an API key the CLI logs offline; the run file holds metrics, hparams and plots."""

from __future__ import annotations

import time

import pytest

from lightning_helpers import REPO, read_wandb_records, wandb_config, wandb_history_keys
from pl_energy.cli import make_cli, wandb_api_key_available

wandb = pytest.importorskip("wandb")


@pytest.fixture
def no_wandb_key(monkeypatch, tmp_path):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc from `wandb login`
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    assert not wandb_api_key_available()


def test_offline_run_holds_agreement_and_energy(no_wandb_key, mnist_root, tmp_path, capsys):
    cli = make_cli(["fit", "--algorithm", "pc_nudge", "--steps", "10",
                "--config", str(REPO / "configs" / "wandb.yaml"),
                "--trainer.logger.init_args.save_dir", str(tmp_path),
                "--data.data_dir", str(mnist_root), "--data.limit_train", "256",
                "--trainer.max_steps", "4", "--trainer.log_every_n_steps", "1",
                "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "4",
                "--trainer.enable_progress_bar", "false",
                "--agreement.every_n_steps", "2", "--model.trace_every_n_steps", "2"])
    cli.trainer.logger.experiment.finish()  # flush the offline run file
    printed = capsys.readouterr()
    assert "W&B: no API key found, logging offline" in printed.err

    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    history = {}
    for _ in range(50):  # W&B's service process may still be writing the file: wait up to 10 s
        records = read_wandb_records(run_file)
        history = wandb_history_keys(records)
        if "agreement/plot/_type" in history:
            break
        time.sleep(0.2)
    for key in ("agreement/cosine", "agreement/rel_error", "agreement/sign", "agreement/norm_ratio",
                "agreement/worst_layer_rel_error", "agreement/cosine/0", "energy/internal", "energy/supervised", "energy/total",
                "train/loss_step", "val/acc", "energy/trace/_type", "agreement/plot/_type"):
        assert key in history, (key, sorted(history))
    assert all(-1 <= value <= 1 for value in history["agreement/cosine"])
    assert len(set(history["energy/total"])) == 2  # traced at steps 0 and 2
    assert history["energy/trace/_type"] == ["images/separated"] * 2  # the two energy plots
    assert history["agreement/plot/_type"] == ["images/separated"]
    media = run_file.parent / "files"
    for names in history["energy/trace/filenames"] + history["agreement/plot/filenames"]:
        assert (media / names[0]).is_file()
    config = wandb_config(records)
    # the algorithm's class and every hyper-parameter's resolved value (the flag's steps among them)
    used = {"class_path": "pl_energy.algorithms.predictive_coding.PCNudge", "init_args": cli.model.algorithm.hparams()}
    assert used["init_args"]["steps"] == 10 and used["init_args"]["lam"] == "auto"
    assert config.get("algorithm") == used and config["model"]["algorithm"] == used, sorted(config)
    assert "lam" not in config  # the shorthand flags are expanded into model.algorithm, not logged as nulls
    # the whole configuration reaches the run config: optimiser, network, data and seed
    assert config.get("optimizer") == {"class_path": "torch.optim.SGD",
                                       "init_args": {"lr": 0.001, "momentum": 0.9, "dampening": 0.0,
                                                     "weight_decay": 0.0, "nesterov": False,
                                                     "maximize": False, "foreach": None,
                                                     "differentiable": False, "fused": None}}, config.get("optimizer")
    assert config.get("seed_everything") == 0
    assert config["model"]["optimizer"]["init_args"]["lr"] == 0.001
    assert config["data"]["class_path"] == "pl_energy.data.MNISTDataModule"
    assert config["trainer"]["max_steps"] == 4
    # every output in the run's own folder, beside its checkpoints (not in the working directory)
    run = tmp_path / "pl-energy" / cli.trainer.logger.version
    assert (run / "config.yaml").is_file() and (run / "agreement.png").is_file()
    assert sorted(p.name for p in (run / "energy").iterdir()) == ["step_0000000.png", "step_0000002.png"]
    assert list((run / "checkpoints").glob("*.ckpt"))
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "energy").exists()
    assert f"pl-energy: outputs in {run}" in printed.out
