"""The ``pl-energy`` CLI's configuration: the run's ``config.yaml`` and logger configs, and what a
checkpoint restores under the values the command line gives."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger

from .cli_help import hyperparameter_flags
from .outputs import run_directory


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


#: The options of the CLI whose value is a class (``--data NAME``, ``--model.optimizer NAME``, ...).
CLASS_OPTIONS = ("data", "model.optimizer", "model.lr_scheduler", "model.network", "model.algorithm")


def named_classes(args: Any) -> set[str]:
    """The class options a command line names itself (``--data X``, ``--data=X``,
    ``--model.optimizer.class_path X``); none for arguments given as a mapping."""
    import sys

    if isinstance(args, dict) or hasattr(args, "as_dict"):
        return set()
    names = set()
    for token in (sys.argv[1:] if args is None else args):
        option = str(token).split("=", 1)[0]
        if option.startswith("--"):
            option = option[2:].removesuffix(".class_path")
            if option in CLASS_OPTIONS:
                names.add(option)
    return names


def without_classes(defaults: dict, paths: set[str]) -> dict:
    """``defaults`` without the class of each dotted path in ``paths`` (``overlay``'s implicit
    classes: a class named on the command line is given even where it is the default)."""
    trimmed = {key: (dict(value) if isinstance(value, dict) else value) for key, value in defaults.items()}
    for path in paths:
        *parents, name = path.split(".")
        node = trimmed
        for parent in parents:
            node[parent] = dict(node.get(parent) or {}) if isinstance(node.get(parent), dict) else {}
            node = node[parent]
        if isinstance(node.get(name), dict):
            node[name] = {key: value for key, value in node[name].items() if key != "class_path"}
    return trimmed


def class_defaults(path: str) -> dict[str, Any]:
    """The init arguments of the class at ``path`` that have defaults, with them."""
    import inspect

    from .core.network_spec import import_object

    parameters = inspect.signature(import_object(path)).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        return {key: value for name, item in tree.items() for key, value in leaves(item, f"{prefix}.{name}").items()}
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
