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

from jsonargparse import DefaultHelpFormatter, Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger

from .algorithms import ALGORITHMS, hyperparameters_of
from .algorithms.registry import hyperparameter_docs, hyperparameter_types
from .configuration import algorithm_from, algorithm_type, describe_algorithm
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
                import yaml

                fs.makedirs(directory, exist_ok=True)
                with fs.open(path, "w") as file:
                    yaml.safe_dump(self.run_config(), file, sort_keys=False)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def run_config(self) -> dict[str, Any]:
        """The run's configuration as plain data; the algorithm shorthands (``--algorithm``,
        ``--lam``, ...) are left out: ``model.algorithm`` holds what they set."""
        import yaml

        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        return {key: value for key, value in config.items() if key not in shorthands()}

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = self.run_config()
        for logger in trainer.loggers:
            if not isinstance(logger, CSVLogger):
                logger.log_hyperparams(config)


#: The data module of the CLI's defaults (Millidge et al. 2022's MNIST setup).
DEFAULT_DATA = "pl_energy.data.MNISTDataModule"
#: The sections a checkpoint restores, and the checkpoint keys that hold their init arguments.
RESTORED = {"model": "hyper_parameters", "data": "datamodule_hyper_parameters"}


def shorthands() -> list[str]:
    """The top-level flags that expand into ``--model.algorithm``: ``--algorithm NAME`` and one
    flag per algorithm hyper-parameter (``--lam``, ``--beta``, ...)."""
    return ["algorithm", *hyperparameter_flags()]


def overlay(base: dict, given: dict, implicit: dict | None = None) -> dict:
    """``base`` with what the user gave over it. A class given for another class than ``base``'s
    replaces it whole, with that class's own defaults (not the previous class's values), except
    the parser's default class in ``implicit``, which jsonargparse names where only init_args
    were given."""
    merged = dict(base)
    for key, value in given.items():
        old, default = merged.get(key), (implicit or {}).get(key)
        default = default if isinstance(default, dict) else {}
        given_class = value.get("class_path") if isinstance(value, dict) else None
        old_class = old.get("class_path") if isinstance(old, dict) else None
        if given_class and given_class != old_class and not (old_class and given_class == default.get("class_path")):
            merged[key] = {**value, "init_args": {**class_defaults(given_class), **(value.get("init_args") or {})}}
        elif isinstance(value, dict) and isinstance(old, dict):
            merged[key] = overlay(old, {name: item for name, item in value.items() if name != "class_path"}, default)
        else:
            merged[key] = value
    return merged


def class_defaults(path: str) -> dict[str, Any]:
    """The init arguments of the class at ``path`` that have defaults, with them."""
    import inspect

    from .core.network_spec import import_object

    parameters = inspect.signature(import_object(path)).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        return {key: value for name, item in tree.items() for key, value in _leaves(item, f"{prefix}.{name}").items()}
    return {prefix.lstrip("."): tree}


def checkpoint_sections(path: str) -> dict[str, dict]:
    """The ``model`` and ``data`` init arguments a checkpoint holds (the data module's only where
    the checkpoint names its class, as the CLI's do)."""
    checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    sections = {}
    for section, key in RESTORED.items():
        saved = dict(checkpoint.get(key) or {})
        saved.pop("_instantiator", None)
        if "_class_path" in saved:
            saved = {"class_path": saved.pop("_class_path"), "init_args": saved}
        elif section == "data":
            continue
        if saved:
            sections[section] = saved
    return sections


class EnergyCLI(LightningCLI):
    """LightningCLI of :class:`~pl_energy.module.EnergyModule` with MNIST defaults.

    The algorithm is the model's init argument ``--model.algorithm`` (a class, e.g.
    ``EquilibriumPropagation``, or a registered name such as ``ep``, with ``--model.algorithm.beta``
    ...); ``--algorithm NAME`` and ``--lam``, ``--beta``, ... are shorthands for it, expanded before
    anything runs, so that ``config.yaml``, the checkpoint and every logger hold the algorithm's
    class and every hyper-parameter's value. ``--algorithm`` naming another algorithm than the one a
    config file describes starts from that algorithm's own defaults.

    With ``--ckpt_path``, the checkpoint's model and data module are restored (as
    ``EnergyModule.load_from_checkpoint`` restores them), and only what the command line or a
    config file gives overrides them, each difference said in one line.
    """

    def parse_arguments(self, parser, args) -> None:
        from jsonargparse._actions import _ActionPrintConfig

        with _ActionPrintConfig.skip_print_config():  # --print_config prints the completed config
            self._parse_twice(parser, args)

    def _parse_twice(self, parser, args) -> None:
        """``self.config``, and ``self.given``: what the command line and config files gave."""
        super().parse_arguments(parser, args)
        parse = parser.parse_object if isinstance(args, (dict, Namespace)) else parser.parse_args
        # jsonargparse carries a default class's init_args over to another class given in its place
        parsers = [parser, *getattr(parser._subcommands_action, "_name_parser_map", {}).values()] \
            if parser._subcommands_action else [parser]
        actions = [action for each in parsers for action in each._actions if action.dest == "data"]
        defaults = [action.default for action in actions]
        try:
            for action in actions:
                action.default = Namespace(class_path=DEFAULT_DATA)
            given = parse(args, defaults=False, _skip_validation=True)  # nothing is required of a part
        finally:
            for action, default in zip(actions, defaults):
                action.default = default
        #: What the command line and config files gave, without the defaults.
        self.given = given.clone().as_dict()

    def _parse_ckpt_path(self) -> None:
        """Replaces LightningCLI's, which lets the checkpoint's model hyper-parameters override
        the command line's and leaves the data module as configured: the model and data module
        are the checkpoint's where one is given, the configuration's otherwise, and what was
        given over them; then the algorithm shorthands are expanded."""
        subcommand = self.config.get("subcommand")
        section = self.config[subcommand] if subcommand else self.config
        given = self.given.get(subcommand, {}) if subcommand else self.given
        path = section.get("ckpt_path")
        saved = checkpoint_sections(path) if path and Path(path).is_file() else {}
        defaults = self._parser(subcommand).get_defaults().as_dict()
        final = overlay({key: saved.get(key, defaults[key]) for key in ("model", "data")},
                        {key: given[key] for key in ("model", "data") if given.get(key)}, defaults)
        configured = "algorithm" in (given.get("model") or {}) or "model" in saved
        final["model"] = self._expand_algorithm(
            final["model"], {name: given[name] for name in shorthands() if name in given}, configured)
        if saved:
            old, new = _leaves(saved), _leaves({key: final[key] for key in saved})
            changed = [f"{key}={new[key]!r} (checkpoint: {old.get(key)!r})" for key in new
                       if key in old and new[key] != old[key]]
            if changed:
                print(f"pl-energy: {path} restored, except as given: {'; '.join(changed)}", file=sys.stderr)
        for key, value in final["model"].items():
            if isinstance(value, dict):
                section["model"][key] = None  # a class given anew does not inherit the previous one's init_args
        section["data"] = None
        self.config = self.parser.parse_object({subcommand: final} if subcommand else final, self.config)

    def _expand_algorithm(self, model: dict, flags: dict, configured: bool) -> dict:
        """``model`` with ``algorithm`` as its class and every hyper-parameter's value: the
        ``--algorithm`` shorthand (another algorithm than the configured one starts from its own
        defaults), then ``algorithm_hparams`` and the hyper-parameter flags over it."""
        name = flags.pop("algorithm", None)
        try:
            current = describe_algorithm(algorithm_from(model.get("algorithm") or "pc_nudge"))
            if name is not None and algorithm_type(name) is not algorithm_type(current["class_path"]):
                if configured:
                    print(f"pl-energy: --algorithm {name} replaces the configured {algorithm_type(current['class_path']).name}, "
                          f"starting from {name}'s own defaults", file=sys.stderr)
                current = describe_algorithm(algorithm_from(name))
            hparams = {**(model.get("algorithm_hparams") or {}), **{k: v for k, v in flags.items() if v is not None}}
            chosen = algorithm_from(current, hparams)
        except TypeError as error:
            self.parser.error(str(error))
        return {**model, "algorithm": describe_algorithm(chosen), "algorithm_hparams": None}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--algorithm", choices=list(ALGORITHMS), default=None, help=_algorithm_help())
        group = parser.add_argument_group(
            "Algorithm hyper-parameters",
            "Shorthands for --model.algorithm.<name>: they set the chosen algorithm's hyper-parameters "
            "(a flag the algorithm does not have is an error).",
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
            "data": {"class_path": DEFAULT_DATA},
            "agreement.every_n_steps": 50,
            "seed_everything": 0,
        })

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # under manual optimisation Lightning refuses these Trainer options: the module applies them
        for key, unset in (("gradient_clip_val", None), ("gradient_clip_algorithm", None),
                           ("accumulate_grad_batches", 1)):
            value = config.trainer.get(key)
            if value is not None and value != unset:
                config.model[key] = value
                config.trainer[key] = unset
        self._set_cpu_threads(config)
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
        attaches (``--agreement.*``): Lightning allows one instance of a stateful callback. The
        default logger (``--trainer.logger`` unset or true) is a CSV log in the run's
        ``default_root_dir``, so that a saved config re-runs where the command line says."""
        if config.get("logger") in (None, True):
            config["logger"] = CSVLogger(save_dir=config.get("default_root_dir") or ".")
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
    """Entry point of the ``pl-energy`` command (returns nothing, so its exit status is 0)."""
    make_cli(args)


if __name__ == "__main__":
    main()
