"""Callbacks for :class:`~pl_energy.module.EnergyModule`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torchmetrics.aggregation import MaxMetric, MeanMetric, MinMetric
from typing_extensions import override

from .metrics import agreement_metrics, gradient_agreement, layer_agreement
from .module import EnergyModule
from .outputs import log_figure
from .plotting import agreement_figure

__all__ = ["GradientAgreement", "agreement_metrics"]  # agreement_metrics lives in pl_energy.metrics

_SHARDED = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


class GradientAgreement(Callback):
    """Agreement of the applied update with the algorithm's exact reference gradient.

    Every ``every_n_steps`` training steps, the update about to be applied is compared with the
    reference gradient (``algorithm.reference``) on the same batch and the same weights.

    The update is ``p.grad`` inside ``on_before_optimizer_step`` (already the mean over processes);
    the reference is ``algorithm.reference`` on the batches of that optimiser step, which the
    callback keeps itself (``on_train_batch_start``, only for the steps it measures), reduced with ``trainer.strategy.reduce(..., "mean")`` on every
    rank, so both sides are the same batch mean on 1 or N processes (with gradient accumulation,
    the mean over the accumulated batches; a step whose window a resumed run entered halfway,
    whose earlier batches the callback did not see, is not measured). Each measurement is written to every logger once, at
    the step it was made (also in runs shorter than ``log_every_n_steps``), globally and per layer
    (top-level child of the network):

    - ``agreement/cosine`` and ``agreement/cosine/<layer>``: cosine similarity;
    - ``agreement/rel_error`` and ``agreement/rel_error/<layer>``: relative L2 error
      ``|update - reference| / |reference|``;
    - ``agreement/worst_layer_rel_error``: the largest layer's relative error,
      ``max_l |u_l - r_l| / |r_l|`` (logged also with ``per_layer=False``): the global metrics
      are dominated by the layers with the largest gradients, and a global cosine of 0.9997 can
      hide a layer whose update is 100% off; the worst layer's name is kept in ``history``
      (``worst_layer``);
    - ``agreement/sign`` and ``agreement/sign/<layer>``: fraction of parameters whose update has
      the reference's sign (among those where neither is exactly zero);
    - ``agreement/norm_ratio`` and ``agreement/norm_ratio/<layer>``: ``|update| / |reference|``.

    The per-layer metrics (``.../<layer>``) are logged with ``per_layer=True``.

    At the end of every training epoch the epoch's summary is logged (torchmetrics aggregators):
    ``agreement/cosine_min``, ``agreement/cosine_mean``, ``agreement/rel_error_max``,
    ``agreement/rel_error_mean``, ``agreement/worst_layer_rel_error_max`` and
    ``agreement/worst_layer_rel_error_mean`` over that epoch's measurements.

    At the end of training a plot of the global metrics (and the worst layer's relative error)
    over training is saved as
    ``agreement.png`` in the run's folder (``pl_energy.outputs``) and logged as the image
    ``agreement/plot`` to W&B and TensorBoard loggers.

    Works with single-device, ``ddp``, ``ddp_spawn`` (and multi-node) strategies; sharded
    strategies (FSDP, DeepSpeed, model parallel) are refused at ``setup``.

    Args:
        every_n_steps: measure every n optimiser steps (step 0 included); 0 disables.
        per_layer: also log the per-layer metrics (the worst layer's relative error is logged
            either way).
        plot: save (and log to W&B) the plot of agreement over training at the end.
    """

    def __init__(self, every_n_steps: int = 50, per_layer: bool = True, plot: bool = True) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0 (0 disables), got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.per_layer = per_layer
        self.plot = plot
        self.history: list[dict[str, float | str]] = []
        self.plot_path: Path | None = None
        self._batches: list[tuple[Tensor, Tensor]] = []
        #: The epoch summaries: (metric, statistic) -> aggregator, reset at every epoch's end.
        # every rank measures the same (reduced) values: no synchronisation, which would also need
        # the aggregators on the backend's device
        # the aggregators in float64 (torchmetrics' default float32 logged a minimum cosine of
        # 0.999986858 as 0.999986887: 1 - cos 0.2 % off)
        local = {"sync_on_compute": False}
        self.summaries = {key: metric.set_dtype(torch.float64) for key, metric in {
            ("cosine", "min"): MinMetric(**local), ("cosine", "mean"): MeanMetric(**local),
            ("rel_error", "max"): MaxMetric(**local), ("rel_error", "mean"): MeanMetric(**local),
            ("worst_layer_rel_error", "max"): MaxMetric(**local),
            ("worst_layer_rel_error", "mean"): MeanMetric(**local)}.items()}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        names = {cls.__name__ for cls in type(trainer.strategy).__mro__}
        sharded = names.intersection(_SHARDED)
        if sharded:
            raise RuntimeError(
                f"GradientAgreement does not support the sharded strategy {sorted(sharded)[0]} "
                f"({type(trainer.strategy).__name__}): it reads whole gradients from p.grad; use a "
                "single device, 'ddp' or 'ddp_spawn'"
            )
        if not isinstance(pl_module, EnergyModule):
            raise TypeError(f"GradientAgreement measures an EnergyModule's updates (its algorithm, network, loss "
                            f"and batches), not a {type(pl_module).__name__}")

    def _measures(self, step: int) -> bool:
        return bool(self.every_n_steps) and step % self.every_n_steps == 0

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for aggregator in self.summaries.values():  # an epoch's summary holds that epoch only
            aggregator.reset()
        self._batches = []  # accumulation groups end with the epoch, as the module's do

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Keep the batches of a step that will be measured (all of them under accumulation:
        the optimiser step, and so ``global_step``, comes after the last)."""
        if self._measures(trainer.global_step):
            self._batches.append(pl_module.prepare_batch(batch))

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        step = trainer.global_step
        batches, self._batches = self._batches, []
        if not self._measures(step) or not trainer.training:
            return
        if not batches:
            raise RuntimeError("GradientAgreement: no batch reached on_train_batch_start before this "
                               "optimiser step")
        if len(batches) != pl_module.accumulated:
            return  # a run resumed inside the window: the batches before the checkpoint are not here
        # with gradient accumulation the update is the mean of several batches' estimates: so is
        # the reference (the weights do not move in between)
        network = pl_module.network
        named = [(name, p) for name, p in network.named_parameters() if p.requires_grad]
        # the reference, averaged over the batches, in one flat buffer: one collective reduces it
        flat_reference = None
        for inputs, targets in batches:
            reference = pl_module.algorithm.reference(network, inputs, targets, pl_module.loss)
            flat = torch.cat([reference[name].detach().reshape(-1).to(p.dtype) for name, p in named])
            flat_reference = flat if flat_reference is None else flat_reference.add_(flat)
        flat_reference = trainer.strategy.reduce(flat_reference.div_(len(batches)), reduce_op="mean")
        references = {name: part.view_as(p) for (name, p), part in
                      zip(named, torch.split(flat_reference, [p.numel() for _, p in named]))}
        updates = {name: p.grad if p.grad is not None else torch.zeros_like(p) for name, p in named}
        values = gradient_agreement(updates, references)
        by_layer = layer_agreement(updates, references)
        values["worst_layer_rel_error"] = by_layer.worst_rel_error
        row: dict[str, float | str] = {"step": float(step), **values, "worst_layer": by_layer.worst_layer}
        logged = {f"agreement/{key}": value for key, value in values.items()}
        if self.per_layer:
            for layer, metrics in by_layer.layers.items():
                for key, value in metrics.items():
                    logged[f"agreement/{key}/{layer}"] = value
                    row[f"{key}/{layer}"] = value
        self.history.append(row)
        for (metric, _), aggregator in self.summaries.items():
            aggregator.update(torch.tensor(values[metric], dtype=torch.float64))
        # Logged once, at the step it was measured, straight to the loggers: through
        # ``pl_module.log`` Lightning would re-log the last value at every logging step (under
        # another step's label) and drop a measurement made between two logging steps. The values
        # are identical on every rank (both sides are reduced): rank 0 writes them.
        trainer.callback_metrics.update({key: torch.tensor(value) for key, value in logged.items()})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(logged, step=step)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the epoch's summaries (the same on every rank: each measurement is reduced)."""
        if not self.summaries[("cosine", "min")].update_called:
            return
        logged = {f"agreement/{metric}_{statistic}": float(aggregator.compute())
                  for (metric, statistic), aggregator in self.summaries.items()}
        trainer.callback_metrics.update({key: torch.tensor(value) for key, value in logged.items()})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(logged, step=trainer.global_step)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.plot or not self.history:
            return
        name = pl_module.algorithm_name
        history = list(self.history)
        self.plot_path = log_figure(
            trainer, lambda: agreement_figure(history, title=f"{name}: agreement with the reference gradient"),
            "agreement.png", "agreement/plot", trainer.global_step,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
