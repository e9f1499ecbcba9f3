"""``pl-energy``: the LightningCLI of pl_energy.

    pl-energy fit --algorithm pc_nudge                       # Millidge et al. 2022's MNIST setup
    pl-energy fit --algorithm ep --beta 0.05 --tol 1e-5      # algorithm hyper-parameters
    pl-energy fit --config configs/mnist_z_il.yaml
    pl-energy fit --config configs/mnist_pc_nudge.yaml --config configs/wandb.yaml
    pl-energy fit --algorithm bp --trainer.devices 2 --trainer.strategy ddp
    pl-energy test --config configs/mnist_pc_nudge.yaml --ckpt_path path/to.ckpt

The defaults train Millidge et al. 2022's MNIST setup: an MLP 784-128-64-10 (relu), cross-entropy, batch 64,
SGD (lr 0.001, momentum 0.9) on :class:`~pl_energy.data.MNISTDataModule`.
``--trainer.gradient_clip_val``, ``--trainer.gradient_clip_algorithm`` and
``--trainer.accumulate_grad_batches`` are applied by the module (Lightning refuses them under
manual optimisation). The
:class:`~pl_energy.callbacks.GradientAgreement` callback is always attached
(``--agreement.every_n_steps``, 0 disables it).
"""

from __future__ import annotations

import logging
import netrc
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger

from .algorithms import ALGORITHMS, hyperparameters_of
from .algorithms.registry import hyperparameter_docs, hyperparameter_types, unknown_hyperparameters
from .callbacks import GradientAgreement
from .module import EnergyModule
from .outputs import run_directory


def hyperparameter_flags() -> dict[str, tuple[Any, str]]:
    """The ``--<name>`` flag of every algorithm hyper-parameter: its type and help, read from the
    algorithm dataclasses (fields, annotations and ``Args:`` docstrings), so that a new field is a
    new flag. A name that means different things in different algorithms (``gamma``) lists each
    meaning with the algorithms it belongs to; the help ends with every algorithm's default."""
    flags: dict[str, tuple[Any, str]] = {}
    for name in ALGORITHMS:
        for field, kind in hyperparameter_types(name).items():
            if field not in flags:
                flags[field] = (kind, "")
    for field, (kind, _) in flags.items():
        meanings: dict[str, list[str]] = {}
        defaults: dict[str, list[str]] = {}
        for name in ALGORITHMS:
            docs = hyperparameter_docs(name)
            if field in docs:
                meanings.setdefault(_first_sentence(docs[field]), []).append(name)
                defaults.setdefault(str(hyperparameters_of(name)[field]), []).append(name)
        text = "; ".join(f"{meaning} [{', '.join(names)}]" for meaning, names in meanings.items())
        default = ", ".join(f"{value} ({', '.join(names)})" for value, names in defaults.items())
        flags[field] = (kind, f"{text} Default: {default}.")
    return flags


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=\.)\s(?=[A-Z])", " ".join(text.split()), maxsplit=1)[0].rstrip(".")


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("NoneType", "None")


def _algorithm_help() -> str:
    return ("The learning algorithm: " + ", ".join(ALGORITHMS) + ". Its hyper-parameters are the flags "
            "of the group below (each says which algorithms have it and their defaults).")


#: Set by the CLI to the thread count it chose, for the processes DDP starts from it.
THREADS_VARIABLE = "PL_ENERGY_THREADS"


def cpu_threads(requested: int | str, processes: int = 1) -> tuple[int, str]:
    """The torch CPU threads of each process and why: ``requested`` if it is a number; for
    ``"auto"``, the cores this process may use shared among the node's ``processes``, less the
    cores other jobs keep busy (the 1-minute load average). Oversubscribed cores are the costly
    side: with two threads on two cores while another job used one, an epoch of chl took 585 s
    against 27 s with one thread; one thread too few costs at most its share (a CNN step 1.5x)."""
    if requested != "auto":
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"--threads must be a positive integer or 'auto', got {requested!r}")
        return requested, "as asked"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // max(1, processes))
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    if busy and cores - busy < share * processes:
        threads = max(1, (cores - busy) // max(1, processes))
        return threads, f"{cores} cores, about {busy} kept busy by other jobs (load average)"
    return share, f"{cores} cores" + (f" shared by {processes} processes" if processes > 1 else "")


def wandb_installed() -> bool:
    """True if the optional ``wandb`` package (``pip install 'pl-energy[wandb]'``) is importable."""
    import importlib.util

    return importlib.util.find_spec("wandb") is not None


def wandb_api_key_available() -> bool:
    """True if W&B can authenticate: ``WANDB_API_KEY`` is set or ``wandb login`` wrote ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _uses_wandb(logger: Any) -> bool:
    if logger is None or isinstance(logger, bool):
        return False
    loggers = logger if isinstance(logger, list) else [logger]
    for item in loggers:
        text = item.get("class_path", "") if hasattr(item, "get") else str(item)
        if "WandbLogger" in str(text):
            return True
    return False


def _config_file(tokens: list[str], index: int) -> tuple[str, dict] | None:
    """(path, contents) when ``tokens[index]`` is ``--config``/``-c`` naming a YAML file
    (``--config FILE`` or ``--config=FILE``), else None."""
    import yaml

    name, equals, value = tokens[index].partition("=")
    if name not in ("--config", "-c"):
        return None
    path = value if equals else (tokens[index + 1] if index + 1 < len(tokens) else "")
    if not Path(path).is_file():
        return None
    loaded = yaml.safe_load(Path(path).read_text())
    return path, loaded if isinstance(loaded, dict) else {}


def _argument_events(tokens: list[str]) -> list[tuple[str, ...]]:
    """The ``--config`` files (with the algorithm they set and whether they hold its
    hyper-parameters), ``--algorithm`` flags and ``--model.algorithm_hparams`` flags, in order."""
    events: list[tuple[str, ...]] = []
    for index, token in enumerate(tokens):
        name, _, value = token.partition("=")
        if not value and index + 1 < len(tokens):
            value = tokens[index + 1]
        config = _config_file(tokens, index)
        if config is not None:
            path, loaded = config
            model = loaded.get("model") or {}
            events.append(("config", path, str(loaded.get("algorithm") or ""),
                           "yes" if model.get("algorithm_hparams") else ""))
        elif name == "--algorithm":
            events.append(("algorithm", value))
        elif name == "--model.algorithm_hparams":
            events.append(("hparams",))
    return events


#: Flags whose help the formatter cuts to its first sentence and default: Lightning's, and the
#: module's (its docstring, whole in the API reference).
BRIEF_FLAGS = ("trainer.", "model.", "ckpt_path", "weights_only", "seed_everything", "print_config")


class BriefHelpFormatter(DefaultHelpFormatter):
    """``--help`` that fits on a few screens: the Trainer's and the module's flags keep the first
    sentence of their documentation, and the lists of known subclasses (hundreds of ``nn.Module``
    and Lightning classes) give way to the ``--<flag>.help CLASS`` that describes one."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        import shutil

        kwargs.setdefault("width", max(100, shutil.get_terminal_size().columns - 2))
        kwargs.setdefault("max_help_position", 34)
        super().__init__(prog, **kwargs)

    def _get_help_string(self, action) -> str:
        if getattr(action, "complete_help", False):
            return action.help
        text = super()._get_help_string(action)
        text = re.sub(r", known subclasses: [^)]*\)", ")", text, flags=re.S)
        if action.dest.startswith(BRIEF_FLAGS) and "(" in text:
            description, _, details = text.rpartition(" (")
            first = _first_sentence(description) + "."
            default = re.search(r"default: .*\)$", details)
            text = f"{first} ({default.group(0) if default else details}"
        return text

    def _format_usage(self, usage, actions, groups, prefix) -> str:
        text = super()._format_usage(usage, actions, groups, prefix)
        lines = text.strip().splitlines()
        if len(lines) <= 4:
            return text
        first = lines[0]  # "usage: pl-energy [options] fit [-c CONFIG] ..."
        command = first[:first.index(" [-c")] if " [-c" in first else first.split(" [", 1)[0]
        return (f"{command} [-c CONFIG] [--algorithm NAME] [--<hyper-parameter> VALUE]\n"
                f"{' ' * len('usage: ')}[--model.* ...] [--data.* ...] [--trainer.* ...] [--agreement.* ...]\n\n")

    def _format_action(self, action) -> str:
        if action.dest.startswith("trainer.") and any(o.endswith(".help") for o in action.option_strings):
            return ""  # --trainer.<flag>.help CLASS still works; the usage line names it
        return super()._format_action(action)


class SaveRunConfig(SaveConfigCallback):
    """``config.yaml`` in the run's own folder (:func:`~pl_energy.outputs.run_directory`, also
    under W&B, where Lightning would write it to the shared ``save_dir``), and the whole
    configuration (network, optimiser, data, trainer, seed) in each logger's run config (W&B's
    config, TensorBoard's hparams); the CSV logger has the file beside its metrics."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        directory = str(run_directory(trainer))  # a collective under DDP
        if self.save_to_log_dir:
            from lightning.fabric.utilities.cloud_io import get_filesystem

            path = f"{directory.rstrip('/')}/{self.config_filename}"
            fs = get_filesystem(directory)
            exists = trainer.strategy.broadcast(fs.isfile(path) if trainer.is_global_zero else False)
            if exists and not self.overwrite:
                raise RuntimeError(f"{path} exists: delete it, or set LightningCLI(save_config_kwargs="
                                   "{'overwrite': True}) to overwrite it")
            if trainer.is_global_zero:
                fs.makedirs(directory, exist_ok=True)
                self.parser.save(self.config, path, skip_none=False, overwrite=self.overwrite,
                                 multifile=self.multifile)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        import yaml

        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            if not isinstance(logger, CSVLogger):
                logger.log_hyperparams(config)


#: The data module of the CLI's defaults (Millidge et al. 2022's MNIST setup).
DEFAULT_DATA = "pl_energy.data.MNISTDataModule"


SUBCOMMANDS = ("fit", "validate", "test", "predict")


def with_default_data(tokens: list[str]) -> list[str]:
    """``tokens`` with ``--data=<DEFAULT_DATA>`` first after the subcommand when they name no
    data module themselves (a ``--data`` value, ``--data.class_path`` or a config file's
    ``data``). The parser has no data default: jsonargparse would carry a default class's
    init_args over to the one chosen, and CIFAR-10 would inherit MNIST's 10,000 validation
    images, batch 64 and flat inputs in silence."""
    at = next((i + 1 for i, token in enumerate(tokens) if token in SUBCOMMANDS), 0)
    for index, token in enumerate(tokens):
        name, equals, _ = token.partition("=")
        if name == "--data" and (equals or (index + 1 < len(tokens) and not tokens[index + 1].startswith("--"))):
            return tokens
        if name == "--data.class_path":
            return tokens
        config = _config_file(tokens, index)
        if config is not None:
            loaded = config[1]
            # a config before the subcommand is the top-level parser's: its sections are subcommands
            sections = [loaded.get(c) for c in SUBCOMMANDS] if index < at else [loaded]
            if any(isinstance(section, dict) and section.get("data") for section in sections):
                return tokens
    return [*tokens[:at], f"--data={DEFAULT_DATA}", *tokens[at:]]


class EnergyCLI(LightningCLI):
    """LightningCLI with ``--algorithm``, algorithm hyper-parameter flags and MNIST defaults.

    A config file's ``algorithm_hparams`` belong to the algorithm it names: ``--config
    configs/mnist_z_il.yaml --algorithm pc_nudge`` runs pc_nudge from its own defaults (the flags
    still apply), not with z_il's lam = 1; an ``--algorithm`` flag placed before a config file
    that names another algorithm is refused, since the later argument would win in silence.
    """

    def parse_arguments(self, parser, args) -> None:
        tokens = sys.argv[1:] if args is None else args
        if isinstance(tokens, (list, tuple)):
            tokens = with_default_data(list(tokens))
        elif isinstance(tokens, dict) and not tokens.get("data"):
            tokens = {**tokens, "data": {"class_path": DEFAULT_DATA}}
        with warnings.catch_warnings():  # the command line itself, completed: not a second source
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            super().parse_arguments(parser, tokens)
        self._events = _argument_events(list(tokens)) if isinstance(tokens, (list, tuple)) else []

    def _algorithm_of_the_hyperparameters(self, chosen: str, hparams: dict) -> dict:
        """Refuse an ``--algorithm`` flag that a later config file overrides; drop a config file's
        hyper-parameters that were written for another algorithm than the one chosen."""
        events = getattr(self, "_events", [])
        flags = [index for index, event in enumerate(events) if event[0] == "algorithm"]
        for index, event in enumerate(events):
            before = [f for f in flags if f < index]
            if event[0] == "config" and event[2] and before and not any(f > index for f in flags):
                first = events[before[-1]][1]
                if first != event[2]:
                    self.parser.error(
                        f"--algorithm {first} comes before --config {event[1]}, which sets algorithm "
                        f"{event[2]} and wins (later arguments override earlier ones): put --algorithm "
                        "after --config")
        sources = [index for index, event in enumerate(events) if event[0] == "config" and event[3]]
        if not sources:
            return hparams
        last = sources[-1]
        _, path, written_for, _ = events[last]
        explicit = any(event[0] == "hparams" for event in events[last + 1:])
        if written_for and written_for != chosen and not explicit:
            print(f"pl-energy: {path} holds {written_for}'s hyper-parameters; {chosen} starts from its "
                  "own defaults (flags such as --steps still apply)", file=sys.stderr)
            return {}
        return hparams

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--algorithm", choices=list(ALGORITHMS), default="pc_nudge",
                            help=_algorithm_help())
        parser.link_arguments("algorithm", "model.algorithm")
        group = parser.add_argument_group(
            "Algorithm hyper-parameters",
            "Override the chosen algorithm's defaults (they are merged into "
            "model.algorithm_hparams; a flag the algorithm does not have is an error).",
        )
        for name, (kind, text) in hyperparameter_flags().items():
            action = group.add_argument(f"--{name}", type=kind | None, default=None,
                                        help=f"{text} Type: {_type_name(kind)}.")
            action.complete_help = True  # the help says it all (every default is unset)
        parser.add_argument("--threads", type=int | Literal["auto"], default="auto",
                            help="torch CPU threads per process on CPU runs; 'auto': the free cores "
                                 "shared among this node's processes (one thread on a 2-core machine "
                                 "where another job runs: oversubscribed cores slowed chl 20x)")
        parser.add_lightning_class_args(GradientAgreement, "agreement")
        parser.set_defaults({
            "model.optimizer": {"class_path": "torch.optim.SGD",
                                "init_args": {"lr": 0.001, "momentum": 0.9}},
            "agreement.every_n_steps": 50,
            "seed_everything": 0,
            "trainer.logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": "."}},
        })

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        hparams = self._algorithm_of_the_hyperparameters(
            config.model.algorithm, dict(config.model.algorithm_hparams or {}))
        for name in hyperparameter_flags():
            value = config.get(name)
            if value is not None:
                hparams[name] = value
        refusal = unknown_hyperparameters(config.model.algorithm, hparams)
        if refusal:
            self.parser.error(refusal)
        config.model.algorithm_hparams = hparams or None
        # under manual optimisation Lightning refuses these Trainer options: the module applies them
        for key, unset in (("gradient_clip_val", None), ("gradient_clip_algorithm", None),
                           ("accumulate_grad_batches", 1)):
            value = config.trainer.get(key)
            if value is not None and value != unset:
                config.model[key] = value
                config.trainer[key] = unset
        self._set_cpu_threads(config)
        logger = config.trainer.get("logger")
        if (hasattr(logger, "get") and str(logger.get("class_path", "")).endswith("CSVLogger")
                and logger.get("init_args", {}).get("save_dir") == "."
                and config.trainer.get("default_root_dir")):  # the CSV log follows the root dir
            logger["init_args"]["save_dir"] = config.trainer.default_root_dir
        if _uses_wandb(config.trainer.get("logger")) and not wandb_installed():
            self.parser.error("logging to W&B needs the wandb package: pip install 'pl-energy[wandb]'")
        if _uses_wandb(config.trainer.get("logger")) and not os.environ.get("WANDB_MODE"):
            if not wandb_api_key_available():
                os.environ["WANDB_MODE"] = "offline"
                print("W&B: no API key found, logging offline to ./wandb "
                      "(sync later with `wandb sync`)", file=sys.stderr)

    @staticmethod
    def _set_cpu_threads(config) -> None:
        """``--threads`` on CPU runs (GPU runs keep torch's default). The choice is exported
        (``OMP_NUM_THREADS``, ``PL_ENERGY_THREADS``), so the processes DDP starts (``ddp``
        re-runs the command, ``ddp_spawn`` spawns workers) use the same count instead of each
        reading the load average, which the others then raise."""
        accelerator = str(config.trainer.get("accelerator") or "auto")
        if accelerator not in ("cpu", "auto") or (accelerator == "auto" and torch.cuda.is_available()):
            return
        devices = config.trainer.get("devices")
        if isinstance(devices, str) and devices.strip().isdigit():
            devices = int(devices)
        processes = devices if isinstance(devices, int) and devices > 0 else (
            len(devices) if isinstance(devices, (list, tuple)) else 1)
        requested = config.get("threads", "auto")
        inherited = os.environ.get(THREADS_VARIABLE)
        try:
            threads, why = ((int(inherited), "the launching process's choice") if requested == "auto" and inherited
                            else cpu_threads(requested, processes))
        except ValueError as error:
            raise SystemExit(f"pl-energy: {error}") from None
        os.environ[THREADS_VARIABLE] = os.environ["OMP_NUM_THREADS"] = str(threads)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        if requested != "auto" or not inherited:
            print(f"pl-energy: {threads} CPU thread{'s' if threads > 1 else ''} per process ({why}; "
                  "--threads N sets it)", file=sys.stderr)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        """A ``GradientAgreement`` given through ``--trainer.callbacks`` replaces the one the CLI
        attaches (``--agreement.*``): Lightning allows one instance of a stateful callback."""
        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        if any(isinstance(callback, GradientAgreement) for callback in given):
            callbacks = [c for c in callbacks if not isinstance(c, GradientAgreement)]
        return super()._instantiate_trainer(config, callbacks)

    def _quiet_wandb(self) -> None:
        """Lightning's WandbLogger always passes ``anonymous=None`` to ``wandb.init``, which
        makes every run print "The anonymous setting has no effect"; drop the unset value."""
        for logger in self.trainer.loggers:
            init = getattr(logger, "_wandb_init", None)
            if isinstance(init, dict) and init.get("anonymous", 0) is None:
                del init["anonymous"]

    # LightningCLI calls before_<subcommand> and after_<subcommand> when they exist
    before_fit = before_validate = before_test = before_predict = _quiet_wandb

    def after_predict(self) -> None:
        """Save what ``predict`` returned: the class predictions and the outputs, one tensor each.
        Under ``ddp`` each rank saves its own share (``predictions_rank<r>.pt``), in the order its
        sampler gave it; under ``ddp_spawn`` the predictions stay in the worker processes and
        nothing is saved (it says so)."""
        trainer = self.trainer
        log_dir = run_directory(trainer)  # a collective under DDP: every rank asks
        batches = trainer.predict_loop.predictions
        if not batches and trainer.world_size > 1 and trainer.is_global_zero:
            print("pl-energy: no predictions reached this process (under ddp_spawn they stay in the "
                  "workers): use --trainer.strategy ddp to save them")
        if batches:
            if isinstance(batches[0], list):  # several dataloaders: keep the first
                batches = batches[0]
            saved = {key: torch.cat([batch[key].cpu() for batch in batches]) for key in batches[0]}
            name = (f"predictions_rank{trainer.global_rank}.pt" if trainer.world_size > 1
                    else "predictions.pt")
            path = log_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(saved, path)
            share = (f" (rank {trainer.global_rank}'s share of {trainer.world_size}; the sampler may "
                     "pad and reorder)" if trainer.world_size > 1 else "")
            print(f"pl-energy: {len(saved['predictions'])} class predictions{share} and their outputs "
                  f"{tuple(saved['outputs'].shape)} saved to {path}; load them with torch.load({str(path)!r})")
        self._say_where_outputs_went()

    def _say_where_outputs_went(self) -> None:
        """One line naming the run's folder (logs, metrics.csv, plots, config) and checkpoint."""
        trainer = self.trainer
        log_dir = run_directory(trainer)  # a collective under DDP: every rank asks before rank 0 speaks
        if not trainer.is_global_zero:
            return
        where = [f"pl-energy: outputs in {log_dir}"]
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger" and getattr(logger, "experiment", None) is not None:
                where.append(f"W&B run {getattr(logger.experiment, 'dir', None) or logger.name}")
        checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or getattr(
            trainer.checkpoint_callback, "last_model_path", "")
        if checkpoint:
            where.append(f"checkpoint {checkpoint}")
        if where:
            print("; ".join(where))

    after_fit = after_validate = after_test = _say_where_outputs_went


def _drop_lightning_tips() -> None:
    """Lightning prints two advertising tips per run; pl-energy runs without them."""
    def no_tips(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(no_tips)


def make_cli(args: ArgsType = None, run: bool = True) -> EnergyCLI:
    """Build (and with ``run`` execute) the ``pl-energy`` LightningCLI; returns it for inspection."""
    _drop_lightning_tips()
    # Lightning 2.6 calls a torch API that torch 2.14 deprecates, once per run: not the user's to fix
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    return EnergyCLI(
        EnergyModule,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_callback=SaveRunConfig,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
        parser_kwargs={"description": "Train energy-based learning algorithms (PC, Z-IL, PC-Nudge, "
                                      "EP, CHL) or backprop with PyTorch Lightning.",
                       "formatter_class": BriefHelpFormatter},
    )


def main(args: ArgsType = None) -> None:
    """Entry point of the ``pl-energy`` command (returns nothing, so its exit status is 0); a
    refusal ends it with one line on stderr and status 2 (``pl_energy.errors``)."""
    from .checks import check_checkpoint_arguments
    from .errors import run_refusing_in_one_line

    def refusing_a_damaged_checkpoint_first() -> None:
        tokens = sys.argv[1:] if args is None else args
        check_checkpoint_arguments(tokens if isinstance(tokens, (list, tuple)) else [])
        make_cli(args)

    run_refusing_in_one_line(refusing_a_damaged_checkpoint_first)


if __name__ == "__main__":
    main()
