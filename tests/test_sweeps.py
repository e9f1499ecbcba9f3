"""The W&B sweeps of ``configs/sweeps/``: every run of the grid, as W&B's agent writes its command
line (wandb's own ``create_sweep_command_args``), is a ``pl-energy fit`` the parser accepts, with
each swept value in the run's configuration."""

from __future__ import annotations

import itertools

import pytest
import yaml

from lightning_helpers import REPO
from pl_energy.cli import make_cli
from pl_energy.configuration import algorithm_type

SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def _runs(sweep: dict) -> list[dict]:
    """Every run of a grid sweep: {parameter: value}."""
    names = list(sweep["parameters"])
    values = [spec["values"] if "values" in spec else [spec["value"]] for spec in sweep["parameters"].values()]
    return [dict(zip(names, combination)) for combination in itertools.product(*values)]


def _command(sweep: dict, run: dict) -> list[str]:
    """The agent's command line of ``run`` (its ``${args}``: ``--name=value``), ``${env}`` left out."""
    utils = pytest.importorskip("wandb.sdk.launch.sweeps.utils")
    macros = {"env": [], "program": [sweep["program"]],
              "args": utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in run.items()}})["args"]}
    return [token for item in sweep["command"] for token in
            (macros[item[2:-1]] if str(item).startswith("${") else [str(item)])]


@pytest.mark.parametrize("path", SWEEPS, ids=[path.stem for path in SWEEPS])
def test_every_run_of_the_sweep_is_a_fit_with_its_values_in_the_config(path, tmp_path, monkeypatch):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] == "grid" and sweep["metric"]["name"] == "val/acc"
    monkeypatch.chdir(tmp_path)  # configs/wandb.yaml logs to "."
    runs = _runs(sweep)
    assert len(runs) > 1
    for run in runs:
        command = _command(sweep, run)
        assert command[:2] == ["pl-energy", "fit"], command
        argv = [str(REPO / token) if token.startswith("configs/") else token for token in command[2:]]
        cli = make_cli(argv, run=False)  # run=False: LightningCLI without subcommands
        config = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
        algorithm = config["model"]["algorithm"]
        for name, value in run.items():
            if name == "algorithm":
                assert algorithm["class_path"].endswith(algorithm_type(value).__name__), (run, algorithm)
                assert cli.model.algorithm.name == value
            else:
                assert algorithm["init_args"][name] == value, (run, name, algorithm)
                assert getattr(cli.model.algorithm, name) == value
        assert type(cli.trainer.logger).__name__ == "WandbLogger" and cli.trainer.max_epochs == 1
