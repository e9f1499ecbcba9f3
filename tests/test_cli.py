"""The ``pl-energy`` command (LightningCLI)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lightning_helpers import REPO
from pl_energy import ALGORITHMS
from pl_energy.algorithms import hyperparameters_of
from pl_energy.algorithms.registry import hyperparameter_docs
from pl_energy.cli import hyperparameter_flags, make_cli
from pl_energy.cli_saved_help import FOLDER, HELPS, help_name, render, saved_help, versions

#: The saved help answers only for the versions it was rendered with; where CI installs newer
#: ones, the parser answers (correct, slower) and the tests of the saved text do not apply.
SAVED_FOR_THESE_VERSIONS = pytest.mark.skipif(
    __import__("json").loads((FOLDER / "versions.json").read_text()) != versions(),
    reason="installed versions differ from pl_energy/help/versions.json: the parser answers --help; "
           "`python -m pl_energy.cli_saved_help` saves it for these versions")

CONFIGS = REPO / "configs"


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    env.pop("WANDB_MODE", None)
    return env


@pytest.mark.slow
def test_fit_pc_nudge_20_steps_as_a_subprocess(mnist_root, tmp_path):
    command = [sys.executable, "-m", "pl_energy.cli", "fit", "--algorithm", "pc_nudge",
               "--trainer.max_steps", "20", "--data.data_dir", str(mnist_root),
               "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
               "--trainer.limit_val_batches", "2", "--agreement.every_n_steps", "10",
               "--model.trace_every_n_steps", "10", "--trainer.log_every_n_steps", "5"]
    result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (version,) = (tmp_path / "lightning_logs").iterdir()
    # the run says where its outputs went, and prints none of Lightning's avoidable noise
    assert f"pl-energy: outputs in {version}" in result.stdout
    assert "checkpoint " in result.stdout.splitlines()[-1]
    for noise in ("No seed found", "Tip:", "tensorboardX", "LeafSpec"):
        assert noise not in result.stdout + result.stderr, noise
    checkpoints = list((version / "checkpoints").glob("*.ckpt"))
    assert [c.name for c in checkpoints] == ["epoch=0-step=20.ckpt"]
    config = (version / "config.yaml").read_text()
    assert "class_path: pl_energy.algorithms.predictive_coding.PCNudge" in config and "lam: auto" in config
    assert "lr: 0.001" in config and "momentum: 0.9" in config
    assert (version / "agreement.png").is_file()
    assert sorted(p.name for p in (version / "energy").glob("*.png")) == ["step_0000000.png",
                                                                          "step_0000010.png"]
    metrics = (version / "metrics.csv").read_text()
    assert "agreement/cosine" in metrics and "energy/total" in metrics

    # validate and test the checkpoint (in-process)
    for subcommand in ("validate", "test"):
        cli = make_cli([subcommand, "--algorithm", "pc_nudge", "--data.data_dir", str(mnist_root),
                    "--ckpt_path", str(checkpoints[0]), "--trainer.logger", "false",
                    "--trainer.enable_progress_bar", "false",
                    f"--trainer.limit_{'val' if subcommand == 'validate' else 'test'}_batches", "2",
                    "--trainer.default_root_dir", str(tmp_path / subcommand)])
        prefix = "val" if subcommand == "validate" else "test"
        assert f"{prefix}/acc" in cli.trainer.callback_metrics

    # predict writes the outputs and their argmax, and says where
    cli = make_cli(["predict", "--algorithm", "pc_nudge", "--data.data_dir", str(mnist_root),
                    "--ckpt_path", str(checkpoints[0]), "--trainer.enable_progress_bar", "false",
                    "--trainer.limit_predict_batches", "3", "--data.batch_size", "16",
                    "--trainer.default_root_dir", str(tmp_path / "predict")])
    (saved,) = (tmp_path / "predict").rglob("predictions.pt")
    predictions = torch.load(saved)
    assert predictions["outputs"].shape == (48, 10)
    assert torch.equal(predictions["predictions"], predictions["outputs"].argmax(-1))


def test_unknown_algorithm_lists_the_valid_names(capsys):
    with pytest.raises(SystemExit) as exit_:
        make_cli(["fit", "--algorithm", "nope"])
    assert exit_.value.code != 0
    error = capsys.readouterr().err
    assert "nope" in error
    for name in ALGORITHMS:
        assert name in error


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit):
        make_cli(["fit", "--help"])
    text = capsys.readouterr().out
    for flag in ("--algorithm {bp,pc,pc_nudge,z_il,fa_z_il,ep,chl,pc_negative}", "--lam", "--steps", "--beta",
                 "--model.algorithm_hparams", "--agreement.every_n_steps", "--model.optimizer"):
        assert flag in text, flag
    assert "lambda" not in text


def test_defaults_are_seed_003_mnist_setup():
    cli = make_cli(["--trainer.logger", "false"], run=False)
    module, data = cli.model, cli.datamodule
    assert module.algorithm_name == "pc_nudge" and module.loss == "cross_entropy"
    assert type(data).__name__ == "MNISTDataModule" and data.batch_size == 64
    widths = [m.out_features for m in module.network.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [128, 64, 10]
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == 0.001 and optimizer.defaults["momentum"] == 0.9
    assert any(type(c).__name__ == "GradientAgreement" for c in cli.trainer.callbacks)


def test_hyperparameter_flags_and_dict_merge():
    cli = make_cli(["--algorithm", "ep", "--steps", "7", "--beta", "0.05",
                "--model.algorithm_hparams", "{step_size: 0.25}", "--trainer.logger", "false"],
               run=False)
    algorithm = cli.model.algorithm
    assert (algorithm.steps, algorithm.beta, algorithm.step_size) == (7, 0.05, 0.25)


def test_solver_flags_reach_the_algorithm():
    cli = make_cli(["--algorithm", "pc_nudge", "--solver", "gd", "--steps", "50", "--step_size", "0.3",
                    "--trainer.logger", "false"], run=False)
    algorithm = cli.model.algorithm
    assert (algorithm.solver, algorithm.steps, algorithm.step_size) == ("gd", 50, 0.3)
    auto = make_cli(["--algorithm", "ep", "--solver", "nesterov", "--step_size", "auto", "--tol", "1e-6",
                     "--trainer.logger", "false"], run=False).model.algorithm
    assert (auto.solver, auto.step_size, auto.tol) == ("nesterov", "auto", 1e-6)


def test_bad_solver_flag_is_refused_in_one_line(capsys):
    with pytest.raises((SystemExit, ValueError), match="unknown solver 'bogus'"):
        make_cli(["--algorithm", "pc_nudge", "--solver", "bogus", "--trainer.logger", "false"], run=False)


def test_flag_the_algorithm_lacks_is_refused(capsys):
    with pytest.raises(SystemExit):
        make_cli(["--algorithm", "pc_nudge", "--beta", "0.1"], run=False)
    assert "has no hyper-parameter(s) beta" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("mnist_*.yaml")))
def test_mnist_configs_build(config):
    cli = make_cli(["--config", str(CONFIGS / config), "--trainer.logger", "false"], run=False)
    assert cli.model.algorithm_name == config.removeprefix("mnist_").removeprefix("cnn_").removeprefix(
        "resmlp20_").removesuffix(".yaml")


def test_imagenet_config_parses(capsys):
    # parse only: building the 215M-parameter net is not needed to check the config
    with pytest.raises(SystemExit) as exit_:
        make_cli(["fit", "--config", str(CONFIGS / "imagenet_fc.yaml"), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "- 50176" in printed and "classes: high_level_27" in printed and "batch_size: 1" in printed


#: The papers' algorithms, each with MNIST, CNN and CIFAR configs (an algorithm added in a file of
#: its own runs from the flags: --algorithm pc_negative).
PAPERS = ("bp", "pc", "pc_nudge", "z_il", "fa_z_il", "ep", "chl")


def test_every_algorithm_has_a_mnist_config_and_a_cnn_config():
    stems = {p.stem for p in CONFIGS.glob("mnist_*.yaml")}
    assert {f"mnist_{a}" for a in PAPERS} | {f"mnist_cnn_{a}" for a in PAPERS} <= stems
    assert {f"cifar10_vgg5_{a}" for a in PAPERS} <= {p.stem for p in CONFIGS.glob("cifar10_*.yaml")}


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("cifar10_*.yaml")))
def test_cifar_configs_train_a_step_on_cifar_files(config, tmp_path):
    from data_fixtures import write_cifar

    write_cifar(tmp_path, "CIFAR10DataModule")
    cli = make_cli(["fit", "--config", str(CONFIGS / config), "--model.network.init_args.width", "0.03125",
                    "--data.data_dir", str(tmp_path), "--data.val_size", "50", "--data.batch_size", "16",
                    "--data.num_workers", "0", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
                    "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                    "--agreement.every_n_steps", "1"])
    assert cli.trainer.global_step == 1 and type(cli.model.network).__name__ == "VGG"
    named = config.split("_", 2)[2].removesuffix(".yaml")
    if named.startswith("gelu_"):  # the fixed-T benchmark settings of PCX (T = 7) and ePC (T = 5)
        algorithm = cli.model.algorithm
        assert cli.model.network.init_args["activation"] == "gelu" and algorithm.tol is None
        assert (algorithm.solver, algorithm.steps) == {"gelu_epc": ("error", 5)}.get(named, ("gd", 7))
        named = "pc" if named == "gelu_epc" else named.removeprefix("gelu_")
    assert cli.datamodule.augment and cli.model.algorithm_name == named


@pytest.mark.parametrize("algorithm", PAPERS)
def test_every_cnn_config_trains_a_step(algorithm, mnist_root, tmp_path):
    cli = make_cli(["fit", "--config", str(CONFIGS / f"mnist_cnn_{algorithm}.yaml"),
                    "--model.network.init_args.channels", "[2, 3]", "--data.data_dir", str(mnist_root),
                    "--data.limit_train", "64", "--data.batch_size", "16", "--trainer.max_steps", "2",
                    "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path),
                    "--trainer.enable_progress_bar", "false", "--agreement.every_n_steps", "1"])
    assert cli.trainer.global_step == 2
    cosines = [
        row["cosine"] for c in cli.trainer.callbacks if type(c).__name__ == "GradientAgreement" for row in c.history]
    assert len(cosines) == 2 and all(abs(c) <= 1 + 1e-9 for c in cosines)
    if algorithm in ("bp", "z_il", "fa_z_il"):  # exact: BP's update (float32)
        assert min(cosines) > 0.9999, cosines


def test_switching_algorithm_starts_from_its_own_defaults(capsys):
    """configs/mnist_z_il.yaml holds z_il's lam = 1.0; pc_nudge chosen after it keeps its own 'auto'."""
    cli = make_cli(["--config", str(CONFIGS / "mnist_z_il.yaml"), "--algorithm", "pc_nudge", "--trainer.logger", "false"],
                   run=False)
    assert cli.model.algorithm.name == "pc_nudge" and cli.model.algorithm.lam == "auto"
    assert "--algorithm pc_nudge replaces the configured z_il, starting from pc_nudge's own defaults" in capsys.readouterr().err
    flagged = make_cli(["--config", str(CONFIGS / "mnist_pc_nudge.yaml"), "--algorithm", "ep", "--steps", "40",
                        "--trainer.logger", "false"], run=False).model.algorithm
    assert flagged.name == "ep" and flagged.steps == 40 and flagged.beta == 0.5  # flags apply, defaults otherwise
    same = make_cli(["--config", str(CONFIGS / "mnist_pc_nudge.yaml"), "--trainer.logger", "false"], run=False)
    assert same.model.algorithm.solver == "gd" and same.model.algorithm.steps == 50  # its own: kept


def test_the_algorithm_flag_wins_wherever_it_stands():
    """--algorithm is a shorthand for --model.algorithm: before or after a config file that
    describes another algorithm, it picks the algorithm (from its own defaults)."""
    for argv in (["--algorithm", "pc_nudge", "--config", str(CONFIGS / "mnist_z_il.yaml")],
                 ["--config", str(CONFIGS / "mnist_z_il.yaml"), "--algorithm", "pc_nudge"]):
        algorithm = make_cli([*argv, "--trainer.logger", "false"], run=False).model.algorithm
        assert algorithm.name == "pc_nudge" and algorithm.lam == "auto"


def test_python_dash_m_and_the_data_subpackage_after_a_bare_import(tmp_path):
    code = "import pl_energy; print(pl_energy.data.MNISTDataModule.__name__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "MNISTDataModule", result.stderr
    result = subprocess.run([sys.executable, "-m", "pl_energy", "fit", "--help"], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--algorithm" in result.stdout, result.stderr


def test_a_gradient_agreement_given_as_a_trainer_callback_replaces_the_default():
    cli = make_cli(["--algorithm", "pc_nudge", "--trainer.callbacks+=pl_energy.callbacks.GradientAgreement",
                    "--trainer.callbacks.every_n_steps", "7", "--trainer.logger", "false"], run=False)
    mine = [c for c in cli.trainer.callbacks if type(c).__name__ == "GradientAgreement"]
    assert len(mine) == 1 and mine[0].every_n_steps == 7


def test_help_fits_on_a_few_screens_and_names_every_hyperparameter(capsys):
    with pytest.raises(SystemExit):
        make_cli(["fit", "--help"])
    text = capsys.readouterr().out
    assert len(text.splitlines()) < 300
    assert "known subclasses" not in text
    for name in ALGORITHMS:
        for field in hyperparameters_of(name):
            assert f"--{field} " in text, field


@SAVED_FOR_THESE_VERSIONS
@pytest.mark.parametrize("name", list(HELPS))
def test_the_saved_help_is_what_the_parser_prints(name):
    """``pl-energy --help`` answers from ``pl_energy/help/`` without building the parser."""
    assert saved_help(HELPS[name]) == render(HELPS[name]), \
        "the saved help is out of date: `python -m pl_energy.cli_saved_help` writes it again"


@SAVED_FOR_THESE_VERSIONS
def test_the_command_answers_a_help_without_importing_torch_or_lightning(tmp_path):
    import tomllib

    module, function = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["pl-energy"].split(":")
    code = (f"import sys; from {module} import {function}; {function}(sys.argv[1:]); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'jsonargparse'}), file=sys.stderr)")
    for args in (["fit", "--help"], ["-h"], ["predict", "-h"]):
        done = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=_env(), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and done.stderr.strip() == "[]", done.stderr[-2000:]
        assert done.stdout == saved_help(args)


def test_only_a_bare_help_is_answered_from_the_saved_text(monkeypatch):
    assert help_name(["--help"]) == help_name(["-h"]) == "pl-energy" and help_name(["test", "-h"]) == "test"
    for args in (["fit", "--algorithm", "ep", "--help"], ["--config", "c.yaml", "fit", "--help"], ["fit"],
                 ["fit", "--model.algorithm.help", "ep"], []):
        assert help_name(args) is None and saved_help(args) is None, args
    monkeypatch.setenv("JSONARGPARSE_DEFAULT_ENV", "true")  # the help would name each flag's variable
    assert saved_help(["fit", "--help"]) is None
    monkeypatch.delenv("JSONARGPARSE_DEFAULT_ENV")
    monkeypatch.setattr("pl_energy.cli_saved_help.versions", lambda: {"lightning": "another"})
    assert saved_help(["fit", "--help"]) is None


def test_every_dataclass_field_is_a_documented_flag():
    flags = hyperparameter_flags()
    for name in ALGORITHMS:
        for field, doc in hyperparameter_docs(name).items():
            assert doc, f"{name}.{field} has no Args: entry"
            assert field in flags and f"[{name}" in flags[field][1] or f", {name}" in flags[field][1]


def test_a_field_without_a_hand_written_flag_reaches_the_algorithm():
    cli = make_cli(["--algorithm", "fa_z_il", "--full_dynamics", "true", "--steps", "4",
                    "--trainer.logger", "false"], run=False)
    assert cli.model.algorithm.full_dynamics is True and cli.model.algorithm.steps == 4


@pytest.mark.parametrize("load, processes, expected", [(0.1, 1, 4), (0.2, 2, 2), (1.2, 1, 3), (3.6, 1, 1),
                                                       (2.0, 2, 1), (9.0, 1, 1)])
def test_auto_threads_share_the_free_cores(monkeypatch, load, processes, expected):
    from pl_energy.cli import cpu_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load), raising=False)
    assert cpu_threads("auto", processes)[0] == expected
    assert cpu_threads(3, processes) == (3, "as asked")


def test_threads_flag_sets_torch_threads_on_cpu_runs(capsys):
    before = torch.get_num_threads()
    try:
        make_cli(["--algorithm", "bp", "--threads", "1", "--trainer.accelerator", "cpu",
                  "--trainer.logger", "false"], run=False)
        assert torch.get_num_threads() == 1
        assert "pl-energy: 1 CPU thread per process (as asked" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_threads_under_ddp_count_the_processes_and_reach_the_workers(monkeypatch, capsys):
    import pl_energy.cli as cli_module

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0), raising=False)
    make_cli(["--algorithm", "bp", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
              "--trainer.strategy", "ddp_spawn", "--trainer.logger", "false"], run=False)
    assert torch.get_num_threads() == 4  # 8 cores, 2 processes: "2" is a count, not a name
    assert os.environ["OMP_NUM_THREADS"] == os.environ[cli_module.THREADS_VARIABLE] == "4"
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 6.0, 6.0), raising=False)  # the workers' own load
    make_cli(["--algorithm", "bp", "--trainer.accelerator", "cpu", "--trainer.logger", "false"], run=False)
    assert torch.get_num_threads() == 4  # a process started by the launcher keeps its choice


def test_another_data_module_does_not_inherit_mnists_defaults(tmp_path):
    """jsonargparse carries the default MNIST module's init_args over to the chosen class: CIFAR
    would get MNIST's 10,000 validation images, batch 64 and flat inputs without a word."""
    cli = make_cli(["--data", "pl_energy.data.CIFAR10DataModule", "--data.data_dir", str(tmp_path),
                    "--trainer.logger", "false"], run=False)
    data = cli.datamodule
    assert (data.val_size, data.batch_size, data.flatten) == (5_000, 128, False)
    cli = make_cli(["--data", "pl_energy.data.CIFAR10DataModule", "--data.batch_size", "64",
                    "--data.data_dir", str(tmp_path), "--trainer.logger", "false"], run=False)
    assert cli.datamodule.batch_size == 64  # given: kept
    config = tmp_path / "cifar.yaml"
    config.write_text("data:\n  class_path: pl_energy.data.CIFAR10DataModule\n  init_args:\n    val_size: 10000\n")
    cli = make_cli(["--config", str(config), "--data.data_dir", str(tmp_path), "--trainer.logger", "false"], run=False)
    assert (cli.datamodule.val_size, cli.datamodule.batch_size) == (10_000, 128)


def test_a_data_module_named_any_way_keeps_what_the_user_gave(tmp_path, capsys):
    """The review's cases: a config's values equal to MNIST's defaults, a JSON --data value, a
    top-level config with a fit: section."""
    given = tmp_path / "given.yaml"
    given.write_text("data:\n  class_path: pl_energy.data.CIFAR10DataModule\n  init_args:\n"
                     "    batch_size: 64\n    flatten: true\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("fit:\n  data:\n    class_path: pl_energy.data.CIFAR10DataModule\n")
    common = ["--trainer.logger", "false", "--model.sizes", "[3072, 10]"]
    cli = make_cli(["-c", str(given), "--data.data_dir", str(tmp_path), *common], run=False)
    assert (cli.datamodule.batch_size, cli.datamodule.flatten, cli.datamodule.val_size) == (64, True, 5_000)
    cli = make_cli(["--data", '{"class_path": "pl_energy.data.CIFAR10DataModule", "init_args": {"batch_size": 64}}',
                    "--data.data_dir", str(tmp_path), *common], run=False)
    assert (cli.datamodule.batch_size, cli.datamodule.val_size) == (64, 5_000)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # runs fit: parse only, through --print_config
        make_cli(["-c", str(nested), "fit", "--print_config"])
    printed = capsys.readouterr().out
    assert "class_path: pl_energy.data.CIFAR10DataModule" in printed and "val_size: 5000" in printed
    cli = make_cli(["--trainer.logger", "false"], run=False)  # nothing named: MNIST
    assert type(cli.datamodule).__name__ == "MNISTDataModule"
