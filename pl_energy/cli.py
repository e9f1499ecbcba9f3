"""``pl-energy``: the LightningCLI of pl_energy.

    pl-energy fit --algorithm pc_nudge                       # seed 003's MNIST setup
    pl-energy fit --algorithm ep --beta 0.05 --tol 1e-5      # algorithm hyper-parameters
    pl-energy fit --config configs/mnist_z_il.yaml
    pl-energy fit --config configs/mnist_pc_nudge.yaml --config configs/wandb.yaml
    pl-energy fit --algorithm bp --trainer.devices 2 --trainer.strategy ddp
    pl-energy test --config configs/mnist_pc_nudge.yaml --ckpt_path path/to.ckpt

The defaults train seed 003's MNIST setup: an MLP 784-128-64-10 (relu), cross-entropy, batch 64,
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
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningCLI

from .algorithms import ALGORITHMS, hyperparameters_of
from .callbacks import GradientAgreement
from .module import EnergyModule

#: Command-line flags for the algorithms' hyper-parameters: name -> (type, help).
HPARAM_FLAGS: dict[str, tuple[type, str]] = {
    "solver": (str, "inference solver: gd (the papers' dynamics), error (PC energies: descent on "
                    "the prediction errors, the default of pc and pc_nudge) or nesterov"),
    "steps": (int, "inference step cap; the exact number of steps when tol is null (pc, pc_nudge, "
                   "fa_z_il, ep, chl)"),
    "step_size": (float | str, "inference step size, or 'auto' to halve it when the energy rises "
                               "(pc, pc_nudge, ep, chl)"),
    "tol": (float, "stop inference once the relative residual is at most tol (pc, pc_nudge, ep, chl)"),
    "lam": (float, "weight lam of the supervised energy, E = I + lam L (pc, pc_nudge, z_il, fa_z_il)"),
    "gamma": (float, "feedback strength / inference rate (pc, z_il, fa_z_il, ep, chl)"),
    "beta": (float, "nudging strength (ep)"),
    "nudged_steps": (int, "inference steps of the nudged phase (ep; default: steps)"),
    "centered": (bool, "symmetric +/- nudging, error O(lam^2) / O(beta^2) (pc, pc_nudge, ep)"),
    "corrected": (bool, "corrected CHL (chl)"),
}


def _algorithm_help() -> str:
    lines = [f"{name} ({', '.join(f'{k}={v}' for k, v in hyperparameters_of(name).items()) or 'no hyper-parameters'})"
             for name in ALGORITHMS]
    return "The learning algorithm, with its hyper-parameters and defaults: " + "; ".join(lines)


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


def _argument_events(tokens: list[str]) -> list[tuple[str, ...]]:
    """The ``--config`` files (with the algorithm they set and whether they hold its
    hyper-parameters), ``--algorithm`` flags and ``--model.algorithm_hparams`` flags, in order."""
    import yaml

    events: list[tuple[str, ...]] = []
    for index, token in enumerate(tokens):
        name, _, value = token.partition("=")
        if not value and index + 1 < len(tokens):
            value = tokens[index + 1]
        if name == "--config" and Path(value).is_file():
            loaded = yaml.safe_load(Path(value).read_text()) or {}
            model = loaded.get("model") or {}
            events.append(("config", value, str(loaded.get("algorithm") or ""),
                           "yes" if model.get("algorithm_hparams") else ""))
        elif name == "--algorithm":
            events.append(("algorithm", value))
        elif name == "--model.algorithm_hparams":
            events.append(("hparams",))
    return events


class EnergyCLI(LightningCLI):
    """LightningCLI with ``--algorithm``, algorithm hyper-parameter flags and MNIST defaults.

    A config file's ``algorithm_hparams`` belong to the algorithm it names: ``--config
    configs/mnist_z_il.yaml --algorithm pc_nudge`` runs pc_nudge from its own defaults (the flags
    still apply), not with z_il's lam = 1; an ``--algorithm`` flag placed before a config file
    that names another algorithm is refused, since the later argument would win in silence.
    """

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        tokens = sys.argv[1:] if args is None else args
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
        for name, (kind, text) in HPARAM_FLAGS.items():
            group.add_argument(f"--{name}", type=kind | None, default=None, help=text)
        parser.add_lightning_class_args(GradientAgreement, "agreement")
        parser.set_defaults({
            "model.optimizer": {"class_path": "torch.optim.SGD",
                                "init_args": {"lr": 0.001, "momentum": 0.9}},
            "data": {"class_path": "pl_energy.data.MNISTDataModule"},
            "agreement.every_n_steps": 50,
            "seed_everything": 0,
            "trainer.logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": "."}},
        })

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        hparams = self._algorithm_of_the_hyperparameters(
            config.model.algorithm, dict(config.model.algorithm_hparams or {}))
        for name in HPARAM_FLAGS:
            value = config.get(name)
            if value is not None:
                hparams[name] = value
        valid = hyperparameters_of(config.model.algorithm)
        unknown = sorted(set(hparams) - set(valid))
        if unknown:
            self.parser.error(
                f"algorithm {config.model.algorithm!r} has no hyper-parameter(s) {', '.join(unknown)}; "
                f"its hyper-parameters are: {', '.join(valid) or 'none'}"
            )
        config.model.algorithm_hparams = hparams or None
        # under manual optimisation Lightning refuses these Trainer options: the module applies them
        for key, unset in (("gradient_clip_val", None), ("gradient_clip_algorithm", None),
                           ("accumulate_grad_batches", 1)):
            value = config.trainer.get(key)
            if value is not None and value != unset:
                config.model[key] = value
                config.trainer[key] = unset
        logger = config.trainer.get("logger")
        if (hasattr(logger, "get") and str(logger.get("class_path", "")).endswith("CSVLogger")
                and logger.get("init_args", {}).get("save_dir") == "."
                and config.trainer.get("default_root_dir")):  # the CSV log follows the root dir
            logger["init_args"]["save_dir"] = config.trainer.default_root_dir
        if _uses_wandb(config.trainer.get("logger")) and not os.environ.get("WANDB_MODE"):
            if not wandb_api_key_available():
                os.environ["WANDB_MODE"] = "offline"
                print("W&B: no API key found, logging offline to ./wandb "
                      "(sync later with `wandb sync`)", file=sys.stderr)


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
        """Save what ``predict`` returned: the outputs and their argmax, as one tensor each. Under
        ``ddp`` each rank saves its own share (``predictions_rank<r>.pt``), in the order its
        sampler gave it; under ``ddp_spawn`` the predictions stay in the worker processes and
        nothing is saved (it says so)."""
        trainer = self.trainer
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        batches = trainer.predict_loop.predictions
        if not batches and trainer.world_size > 1 and trainer.is_global_zero:
            print("pl-energy: no predictions reached this process (under ddp_spawn they stay in the "
                  "workers): use --trainer.strategy ddp to save them")
        if batches:
            if isinstance(batches[0], list):  # several dataloaders: keep the first
                batches = batches[0]
            outputs = torch.cat([b.cpu() for b in batches])
            name = (f"predictions_rank{trainer.global_rank}.pt" if trainer.world_size > 1
                    else "predictions.pt")
            path = Path(log_dir or ".") / name
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"outputs": outputs, "predictions": outputs.argmax(-1)}, path)
            share = (f" (rank {trainer.global_rank}'s share of {trainer.world_size}; the sampler may "
                     "pad and reorder)" if trainer.world_size > 1 else "")
            print(f"pl-energy: {outputs.shape[0]} predictions{share} (outputs {tuple(outputs.shape)} "
                  f"and their argmax) saved to {path}; load them with torch.load({str(path)!r})")
        self._say_where_outputs_went()

    def _say_where_outputs_went(self) -> None:
        """One line naming the run's folder (logs, metrics.csv, plots, config) and checkpoint."""
        trainer = self.trainer
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks before rank 0 speaks
        if not trainer.is_global_zero:
            return
        where = [f"pl-energy: outputs in {log_dir}"] if log_dir else []
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
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
        parser_kwargs={"description": "Train energy-based learning algorithms (PC, Z-IL, PC-Nudge, "
                                      "EP, CHL) or backprop with PyTorch Lightning."},
    )


def main(args: ArgsType = None) -> None:
    """Entry point of the ``pl-energy`` command (returns nothing, so its exit status is 0)."""
    make_cli(args)


if __name__ == "__main__":
    main()
