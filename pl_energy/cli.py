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
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from .algorithms import ALGORITHMS
from .callbacks import GradientAgreement
from .cli_config import (DEFAULT_DATA, SaveRunConfig, checkpoint_sections, leaves, named_classes, overlay,
                         shorthands, without_classes)
from .cli_environment import (THREADS_VARIABLE, cpu_threads, set_cpu_threads, uses_wandb,  # noqa: F401
                              wandb_api_key_available, wandb_installed)
from .cli_help import BriefHelpFormatter, _algorithm_help, _type_name, hyperparameter_flags
from .configuration import algorithm_from, algorithm_type, describe_algorithm
from .module import EnergyModule, trained_activation
from .outputs import run_directory


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
        #: The options whose class the command line names (jsonargparse names the default class
        #: where only init_args were given, so a class given equal to the default is told apart here).
        self.named_classes = named_classes(args)

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
        if "model" in saved:  # the units it was trained with, also for another algorithm given now
            saved["model"]["activation"] = trained_activation(saved["model"])
        defaults = self._parser(subcommand).get_defaults().as_dict()
        implicit = without_classes(defaults, self.named_classes)  # a default class named is given, not implied
        final = overlay({key: saved.get(key, defaults[key]) for key in ("model", "data")},
                        {key: given[key] for key in ("model", "data") if given.get(key)}, implicit)
        configured = "algorithm" in (given.get("model") or {}) or "model" in saved
        final["model"] = self._expand_algorithm(
            final["model"], {name: given[name] for name in shorthands() if name in given}, configured)
        if saved:
            old, new = leaves(saved), leaves({key: final[key] for key in saved})
            changed = [f"{key}={new[key]!r} (checkpoint: {old.get(key)!r})" for key in new
                       if key in old and new[key] != old[key]]
            restored = [item for item in changed if item.startswith(("model.optimizer", "model.lr_scheduler."))]
            if subcommand == "fit" and restored:
                self.parser.error(f"fit --ckpt_path resumes the checkpoint's optimiser and scheduler in their saved "
                                  f"state, learning rate included, so {'; '.join(restored)} would not take effect: "
                                  "leave them out to resume as trained")
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
                            help="torch CPU threads per process on CPU runs; 'auto': the cores "
                                 "other jobs leave free, shared among this node's processes")
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
        set_cpu_threads(config)
        if uses_wandb(config.trainer.get("logger")) and not wandb_installed():
            self.parser.error("logging to W&B needs the wandb package: pip install 'pl-energy[wandb]'")
        if uses_wandb(config.trainer.get("logger")) and not os.environ.get("WANDB_MODE"):
            if not wandb_api_key_available():
                os.environ["WANDB_MODE"] = "offline"
                print("W&B: no API key found, logging offline to ./wandb "
                      "(sync later with `wandb sync`)", file=sys.stderr)

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
        parser_kwargs={"prog": "pl-energy",  # also under python -m pl_energy, as the saved help
                       "description": "Train energy-based learning algorithms (PC, Z-IL, PC-Nudge, "
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
