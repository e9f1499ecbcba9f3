"""``EnergyModule``: any registered algorithm (``pl_energy.ALGORITHMS``) as a
LightningModule.

The algorithm computes an estimate of d(loss)/d(theta) on the batch with its own phases; the
module applies it with manual optimisation, through ``self.manual_backward`` on the scalar
``sum((p * g.detach()).sum())`` whose gradient is exactly the estimate. This is what makes every
Strategy (single device, ``ddp``, ``ddp_spawn``, multi-node) reduce the update across processes:
after ``manual_backward`` returns, ``p.grad`` is the mean of the ranks' estimates.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from .algorithms import Algorithm, BatchStatisticsWarning, EstimateErrorWarning, NotConvergedWarning, PrecisionWarning
from .checks import (CheckedCheckpointIO, check_checkpoint_file, check_network_fits_batch, check_network_fits_data,
                     quiet_warnings_off_rank_zero, unpack_batch)
from .core import mlp
from .configuration import algorithm_from, describe_algorithm, factory_from, network_from, plain_arguments
from .core.losses import as_loss
from .core.networks import compile_layers
from .errors import RefusedValue
from .outputs import log_figure
from .plotting import energy_trace_figure

DEFAULT_SIZES = (784, 128, 64, 10)
RNG_KEY = "pl_energy_rng_states"
#: The metrics ``training_step`` logs at every batch (``train/loss_step`` and so on, as Lightning names them too).
TRAINING_METRICS = frozenset(f"train/{name}{suffix}" for name in ("loss", "acc") for suffix in ("", "_step", "_epoch"))
#: The checkpoint's key for an open accumulation window (``EnergyModule._open_window``).
WINDOW_KEY = "pl_energy_accumulation_window"
#: pl_energy's warning categories, shown by rank 0 only under DDP.
ENERGY_WARNINGS = (NotConvergedWarning, BatchStatisticsWarning, PrecisionWarning, EstimateErrorWarning)


#: Millidge et al. 2022's MNIST optimiser (A.1): SGD, lr 0.001, momentum 0.9.
default_optimizer = functools.partial(torch.optim.SGD, lr=0.001, momentum=0.9)


class EnergyModule(pl.LightningModule):
    """Train a network with an energy-based learning algorithm (or backprop) under Lightning.

    The checkpoint keeps the network's ``{"class_path", "init_args"}`` description (see
    :mod:`pl_energy.configuration`), so ``load_from_checkpoint(path)`` rebuilds it. The
    checkpoint, ``hparams`` and every logger hold the algorithm's description with every
    hyper-parameter's value (``--model.algorithm`` of the CLI takes the same description, e.g.
    ``pl_energy.algorithms.EquilibriumPropagation(beta=0.1)`` or ``"ep"``). The module applies
    its updates itself (manual optimisation), so clipping and accumulation are its own
    arguments: ``EnergyModule(..., gradient_clip_val=1.0, accumulate_grad_batches=4)``, not the
    Trainer's, which Lightning refuses with manual optimisation (the CLI moves
    ``--trainer.gradient_clip_val`` and ``--trainer.accumulate_grad_batches`` here); under DDP the
    accumulated batches in between are not synchronised (``no_sync``). A trace logs
    ``energy/internal``, ``energy/supervised`` and ``energy/total`` and saves its plot.
    ``compile`` goes through ``core.networks.compile_layers`` (parameter names and checkpoints
    unchanged; ``{"mode": "reduce-overhead"}`` for CUDA graphs on a GPU): inference calls every
    layer many times per batch on fixed shapes, which is what compilation pays off on; plain
    ``Linear`` layers keep their closed forms and are not called; where every layer has one
    (dense MLPs, ``ResidualMLP``), the predictive-coding inference steps are compiled instead,
    each as one graph (``core.compiled_steps``), and pc_nudge's default estimate, whose phases
    stop at their start, as one graph for the whole estimate (``algorithms.graph_estimate``).

    Args:
        network: an ``nn.Sequential`` of layers, or its description; None: the default MLP.
        sizes: layer widths of the default MLP (Millidge et al. 2022's: 784-128-64-10).
        activation: hidden activation of the default MLP; None: ``clip`` for ep/chl, else ``relu``.
        algorithm: the learning algorithm: an instance, a registered name (``"ep"``), a class
            name or path, or its ``{"class_path", "init_args"}`` description.
        algorithm_hparams: hyper-parameters of an algorithm given by name, e.g. ``{"lam": 0.01}``.
        loss: ``cross_entropy`` or ``mse``.
        optimizer: a callable taking the parameters and returning the optimiser (default: SGD,
            lr 0.001, momentum 0.9), or its description (a plain function is not checkpointed).
        lr_scheduler: an optional LR scheduler factory taking the optimiser, or its description.
        lr_scheduler_interval: step the scheduler every optimiser ``step`` or every ``epoch``.
        lr_scheduler_monitor: the metric of ``ReduceLROnPlateau``-style schedulers.
        gradient_clip_val: clip each applied update (after DDP's all-reduce) to this norm/value.
        gradient_clip_algorithm: ``norm`` (the global L2 norm) or ``value`` (elementwise).
        accumulate_grad_batches: average the estimates of this many batches into one optimiser
            step (this module's option, not the Trainer's).
        trace_every_n_steps: record, log and plot the energy of every inference step every n
            training steps (0 disables).
        num_classes: classes of the accuracy metric; None: the network's output width.
        batch_keys: (inputs, targets) keys of mapping batches.
        evaluate_initial_weights: evaluate untrained weights (else refused).
        allow_constant_batch_statistics: train BatchNorm, statistics held constant.
        compile: compile each layer with ``torch.compile`` in place, and the inference steps
            (a dict: its options).

    Batches given as mappings are read with ``batch_keys``, else with the first pair of
    ``pl_energy.checks.DEFAULT_BATCH_KEYS`` they hold (``x``/``y``, ``image``/``label``,
    ``input``/``target``, Hugging Face's ``pixel_values``/``labels``...). ``validate``, ``test``
    and ``predict`` refuse weights that were neither trained nor loaded (no ``ckpt_path``)
    unless ``evaluate_initial_weights`` (the network as built: random, or given pre-trained).
    An energy-based algorithm refuses BatchNorm in training mode, whose statistics it holds
    constant per batch instead of backpropagating through them (cosine 0.38 with bp's gradient
    under pc_nudge), unless ``allow_constant_batch_statistics``.
    """

    def __init__(
        self,
        network: nn.Sequential | None = None,
        sizes: Sequence[int] = DEFAULT_SIZES,
        activation: str | None = None,
        algorithm: Algorithm | str = "pc_nudge",
        algorithm_hparams: dict[str, Any] | None = None,
        loss: Literal["cross_entropy", "mse"] = "cross_entropy",
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] = "epoch",
        lr_scheduler_monitor: str = "val/loss",
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Literal["norm", "value"] = "norm",
        accumulate_grad_batches: int = 1,
        trace_every_n_steps: int = 100,
        num_classes: int | None = None,
        batch_keys: Sequence[str] | None = None,
        evaluate_initial_weights: bool = False,
        allow_constant_batch_statistics: bool = False,
        compile: bool | dict[str, Any] = False,
    ) -> None:
        super().__init__()
        built = algorithm_from(algorithm, algorithm_hparams)  # an unknown name fails here, listing the valid ones
        if loss not in ("cross_entropy", "mse"):
            raise ValueError(f"unknown loss {loss!r}; choose 'cross_entropy' or 'mse'")
        if trace_every_n_steps is None or trace_every_n_steps < 0:
            raise ValueError(f"trace_every_n_steps must be >= 0, got {trace_every_n_steps}")
        given = network_from(network), factory_from(optimizer), factory_from(lr_scheduler)
        if network is None:  # saved resolved: loaded for another algorithm, the MLP keeps its units
            activation = activation or built.default_activation
        # save_hyperparameters reads __init__'s arguments by name: it keeps their descriptions
        # (LightningCLI passes its own, the config's, instead)
        network, optimizer, lr_scheduler = plain_arguments(*given)
        algorithm, algorithm_hparams = describe_algorithm(built), None  # every value, resolved
        self.save_hyperparameters()
        network, optimizer, lr_scheduler = given
        #: Arguments the checkpoint cannot hold (a lambda optimiser, a custom module).
        self.unsaved_arguments = [name for name, value in zip(("network", "optimizer", "lr_scheduler"), given)
                                  if value is not None and self.hparams.get(name) is None]
        self.automatic_optimization = False
        self.algorithm: Algorithm = built
        self.algorithm_name = built.name
        self.algorithm.allow_constant_batch_statistics = bool(allow_constant_batch_statistics)
        self.network = network if network is not None else mlp(list(sizes), activation=activation)
        self.compile_options = (compile if isinstance(compile, dict) else {}) if compile else None
        if self.compile_options is not None:
            compile_layers(self.network, **self.compile_options)
            self.algorithm.compile_inference = self.compile_options
        self.loss = loss
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        if lr_scheduler_interval not in ("step", "epoch"):  # anything else would never step the scheduler
            raise ValueError(f"lr_scheduler_interval must be 'step' or 'epoch', got {lr_scheduler_interval!r}")
        self.lr_scheduler_interval = lr_scheduler_interval
        self.lr_scheduler_monitor = lr_scheduler_monitor
        if gradient_clip_val is not None and not gradient_clip_val > 0:
            raise ValueError(f"gradient_clip_val must be > 0 (or None), got {gradient_clip_val}")
        if isinstance(accumulate_grad_batches, bool) or not isinstance(accumulate_grad_batches, int) \
                or accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be an integer >= 1, got {accumulate_grad_batches!r}")
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.accumulate_grad_batches = accumulate_grad_batches
        self.trace_every_n_steps = int(trace_every_n_steps)
        width = _output_width(self.network)
        if num_classes and width is not None and num_classes != width:
            raise RefusedValue(f"num_classes={num_classes} but the network has {width} outputs: give its last "
                               f"layer {num_classes} outputs (sizes ending with {num_classes}), or leave "
                               "num_classes unset to take the network's")
        classes = num_classes or width
        if classes is None:
            raise ValueError("cannot infer the number of classes from the network; pass num_classes")
        self.num_classes = int(classes)
        if batch_keys is not None and (isinstance(batch_keys, str) or len(batch_keys) != 2):
            raise RefusedValue(f"batch_keys must name two keys, the inputs' and the targets', got {batch_keys!r}")
        self.batch_keys = None if batch_keys is None else tuple(batch_keys)
        self.evaluate_initial_weights = bool(evaluate_initial_weights)
        #: Where the weights come from: None (as built), "trained" or "loaded" (a checkpoint or
        #: ``load_state_dict``); ``validate``/``test``/``predict`` refuse None by default.
        self.weights_origin: str | None = None
        #: The stages whose first batch was checked against the network (input width, classes).
        self._checked_stages: set[str] = set()
        self.train_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(self.num_classes, average="micro")
        #: How many batches' estimates the next optimiser step averages (1 without accumulation).
        self.accumulated = 0
        #: The open accumulation window of the checkpoint a run resumes from (``on_load_checkpoint``),
        #: put back when training starts (Lightning zeroes the gradients after loading a checkpoint).
        self._resumed_window: dict[str, Any] | None = None
        self.energy_traces: list[tuple[int, dict[str, list[float]]]] = []

    # ----------------------------------------------------------------- helpers
    @property
    def network_dtype(self) -> torch.dtype:
        for p in self.network.parameters():
            return p.dtype
        return torch.get_default_dtype()

    def prepare_batch(self, batch, stage: str = "train") -> tuple[Tensor, Tensor]:
        """(inputs in the network's floating dtype, targets) of a training or evaluation batch:
        ``(inputs, targets, ...)`` or a mapping (``batch_keys``). The first batch of each stage
        is checked against the network (input width, class range)."""
        inputs, targets = unpack_batch(batch, self.batch_keys)
        self._check_first_batch(stage, inputs, targets)
        if inputs.is_floating_point():
            inputs = inputs.to(self.network_dtype)
        return inputs, targets

    def _check_first_batch(self, stage: str, inputs: Tensor, targets: Tensor | None) -> None:
        if stage not in self._checked_stages and isinstance(inputs, Tensor):
            check_network_fits_batch(self.network, self.num_classes, inputs, targets)
            self._checked_stages.add(stage)

    def forward(self, inputs: Tensor) -> Tensor:
        """The algorithm's free-phase prediction (feedforward, or the Hopfield equilibrium)."""
        return self.algorithm.predict(self.network, inputs.to(self.network_dtype))

    def _trace_due(self) -> bool:
        n = self.trace_every_n_steps
        return n > 0 and self.global_step % n == 0

    # ---------------------------------------------------------------- training
    def training_step(self, batch, batch_idx: int) -> Tensor:
        inputs, targets = self.prepare_batch(batch)
        # this batch's place in the window; counted in ``accumulated`` once its gradient is in p.grad
        # (an exception before that, saved by OnExceptionCheckpoint, leaves the window as it was)
        position = self.accumulated + 1
        record = self._trace_due() and position == 1  # once per optimiser step
        step = int(self.global_step)
        # The algorithm runs on the plain network (not a DDP wrapper): its own autograd calls must
        # not touch the reducer. Only manual_backward below arms the gradient all-reduce.
        estimate = self.algorithm.estimate(self.network, inputs, targets, loss=self.loss, record=record)
        opt = self.optimizers()
        surrogate = None
        for name, p in self.network.named_parameters():
            if not p.requires_grad:
                continue
            g = estimate.gradients.get(name)
            g = torch.zeros_like(p) if g is None else g.detach().to(p.dtype)
            term = (p * g).sum()
            surrogate = term if surrogate is None else surrogate + term
        if surrogate is None:
            raise RuntimeError("the network has no trainable parameters")
        # manual accumulation (Lightning's documented pattern): the mean of k estimates, one step
        stepping = position == self.accumulate_grad_batches or self.trainer.is_last_batch
        with opt.toggle_model(sync_grad=stepping):
            self.manual_backward(surrogate / self.accumulate_grad_batches)
        self.accumulated = position
        if stepping:
            if self.accumulated != self.accumulate_grad_batches:  # a shorter last group
                for p in self.network.parameters():
                    if p.grad is not None:
                        p.grad.mul_(self.accumulate_grad_batches / self.accumulated)
            if self.gradient_clip_val is not None:
                self.clip_gradients(opt, gradient_clip_val=self.gradient_clip_val,
                                    gradient_clip_algorithm=self.gradient_clip_algorithm)
            opt.step()
            opt.zero_grad()
            self.weights_origin = "trained"
            self.accumulated = 0
            if self.lr_scheduler_interval == "step":
                self._step_scheduler()

        batch_size = inputs.shape[0]
        loss = estimate.loss.detach()
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=batch_size)
        self.train_acc(estimate.output.detach(), targets)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=batch_size)
        if estimate.inference:
            self._log_inference(estimate.inference, batch_size)
        self._log_estimate(estimate, batch_size)
        if estimate.trace is not None:
            self._log_trace(estimate.trace, batch_size, step)
        return loss

    def _log_inference(self, reports, batch_size: int) -> None:
        """``inference/steps`` (all phases), ``inference/converged`` (1 when every phase reached
        its tolerance), ``inference/settled`` (1 when a phase stopped on kinks with its residual
        above the tolerance), ``inference/residual`` (the largest final residual),
        ``inference/backoffs`` (step halvings after a rising energy) and
        ``inference/units_on_kink`` (units an active-set solve found on their kink, with a
        fractional slope: ``pl_energy.core.active_set``)."""
        values = {
            "inference/steps": float(sum(report.steps for report in reports)),
            "inference/converged": float(all(report.converged for report in reports)),
            "inference/settled": float(any(report.settled for report in reports)),
            "inference/residual": max(report.residual for report in reports),
            "inference/backoffs": float(sum(report.backoffs for report in reports)),
            "inference/units_on_kink": float(sum(report.units_on_kink or 0 for report in reports)),
        }
        for name, value in values.items():
            self.log(name, value, on_step=True, on_epoch=False, sync_dist=True, batch_size=batch_size)

    def _log_estimate(self, estimate, batch_size: int) -> None:
        """``estimate/nudge`` (the lam or beta the estimate was read with, chosen per batch by
        "auto") and ``estimate/worst_error`` (the largest layer's ``Estimate.error_bound``: the
        estimate's own relative error against its vanishing-nudge limit; centered ep's and
        chl's embedded estimates of it), where there are."""
        values = {"estimate/nudge": estimate.nudge,
                  "estimate/worst_error": None if estimate.worst_error is None else estimate.worst_error[1]}
        for name, value in values.items():
            if value is not None:  # the worst layer over the processes, not their mean
                self.log(name, float(value), on_step=True, on_epoch=False, sync_dist=True, batch_size=batch_size,
                         reduce_fx="max" if name == "estimate/worst_error" else "mean")

    def _log_trace(self, trace, batch_size: int, step: int) -> None:
        for name in ("internal", "supervised", "total"):
            self.log(f"energy/{name}", getattr(trace, name)[-1].detach().to(torch.float64),
                     on_step=True, on_epoch=False, sync_dist=True, batch_size=batch_size)
        self.log("energy/inference_steps", float(trace.steps), on_step=True, on_epoch=False,
                 sync_dist=True, batch_size=batch_size)
        data = trace.as_dict()
        self.energy_traces.append((step, data))
        if self._trainer is not None:
            log_figure(self.trainer, lambda: _energy_figure(data, self.algorithm, step),
                       Path("energy") / f"step_{step:07d}.png", "energy/trace", step)

    def setup(self, stage: str) -> None:
        """Compile the layers again where a copy lost it (the workers of ``ddp_spawn`` get a
        pickled copy of the module, whose layers would otherwise run eagerly); check the run's
        edges before it starts: the data module's classes against the network, a checkpoint
        file before torch reads it (``CheckedCheckpointIO``), and pl_energy's warnings once per
        run (rank 0 only)."""
        if self.compile_options is not None and any(
                getattr(layer, "_compiled_call_impl", None) is None for layer in self.network.children()):
            compile_layers(self.network, **self.compile_options)
        self._checked_stages.clear()
        self._resumed_window = None  # a resumed fit that stopped before training started left its window
        if self._trainer is None:
            return
        trainer = self.trainer
        quiet_warnings_off_rank_zero(trainer.global_rank, ENERGY_WARNINGS)
        if trainer.datamodule is not None:
            check_network_fits_data(self.num_classes, trainer.datamodule)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = CheckedCheckpointIO()

    def configure_callbacks(self) -> list:
        """No callbacks of its own. Lightning calls this before it checks the Trainer's options,
        so that it is where ``Trainer(gradient_clip_val=...)`` and
        ``Trainer(accumulate_grad_batches=...)``, which manual optimisation cannot honour, are
        refused with the module argument to write instead."""
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return []
        moved = {name: value for name, value, off in (("gradient_clip_val", trainer.gradient_clip_val, (None, 0)),
                                                      ("accumulate_grad_batches", trainer.accumulate_grad_batches, (1,)))
                 if value not in off}  # clipping at 1.0 is clipping
        if moved:
            if "gradient_clip_val" in moved and trainer.gradient_clip_algorithm not in (None, "norm"):
                moved["gradient_clip_algorithm"] = str(trainer.gradient_clip_algorithm)
            arguments = ", ".join(f"{name}={value!r}" for name, value in moved.items())
            raise ValueError(f"EnergyModule applies its updates itself (manual optimisation), which the Trainer's "
                             f"{' and '.join(n for n in moved if n != 'gradient_clip_algorithm')} cannot reach: "
                             f"write EnergyModule(..., {arguments}) and leave them out of Trainer(...) "
                             "(the pl-energy CLI moves --trainer.gradient_clip_val and "
                             "--trainer.accumulate_grad_batches there itself)")
        return []

    def on_fit_start(self) -> None:
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if self.gradient_clip_val is not None and scaler is not None:
            # Lightning unscales inside optimizer.step, after any clipping we could do: the clip
            # would act on loss-scaled updates (Lightning issue #9694)
            raise ValueError("gradient_clip_val cannot be combined with precision '16-mixed' (its loss scaling "
                             "is undone only inside the optimiser step): use 'bf16-mixed' or 32-bit")

    def on_train_start(self) -> None:
        # a run resumed inside an accumulation window continues it (Lightning does not start the
        # resumed epoch again: ``on_train_epoch_start`` does not run for it)
        window, self._resumed_window = self._resumed_window, None
        if window is not None:
            self.accumulated = self._continue_window(window)
        if self.accumulate_grad_batches > 1:
            self._check_resumed_epoch()

    def _check_resumed_epoch(self) -> None:
        """Warn where a run resumes inside an epoch with a train loader that cannot resume it (no
        ``state_dict``/``load_state_dict``): the epoch starts its batches again, so the batches
        before the checkpoint are trained on twice. Lightning's own warning counts an epoch's
        optimiser steps with the Trainer's accumulation, which is 1 under this module, so with the
        module's accumulation it misses such resumes (and warns about some end-of-epoch ones)."""
        trainer = self.trainer
        done, total = trainer.fit_loop.epoch_loop.batch_progress.current.processed, trainer.num_training_batches
        loaders = torch.utils._pytree.tree_leaves(trainer.train_dataloader)
        if 0 < done < total and not all(hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict")
                                        for loader in loaders):
            warnings.warn(f"this run resumes inside an epoch (after {done} of its {total} batches) with a train loader "
                          "that cannot resume it, so the epoch starts its batches again and trains on those before the "
                          "checkpoint twice: resume from an end-of-epoch checkpoint, or use pl_energy's data modules, "
                          "whose train loaders resume their epoch", UserWarning, stacklevel=2)

    def on_train_epoch_start(self) -> None:
        self.accumulated = 0  # accumulation windows end with the epoch (or an interrupted run)

    def on_validation_model_zero_grad(self) -> None:
        """Lightning frees the gradients before validating, except inside its own accumulation
        window; this module accumulates itself (the sum so far in ``p.grad``, the Trainer's
        ``accumulate_grad_batches`` at 1), so an open window's gradients are kept: a validation
        inside one (``val_check_interval``) dropped them before."""
        if not self.accumulated:
            super().on_validation_model_zero_grad()

    def on_train_epoch_end(self) -> None:
        if self.lr_scheduler_interval == "epoch":
            self._step_scheduler()

    def _step_scheduler(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is None:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            metric = self.trainer.callback_metrics.get(self.lr_scheduler_monitor)
            if metric is not None:
                scheduler.step(metric)
            else:
                self._plateau_metric_missing()
        else:
            scheduler.step()

    def _plateau_metric_missing(self) -> None:
        """ReduceLROnPlateau cannot step: its metric is not logged. The module's own training
        metrics are missing only before their first log (at the first step of ``"step"``
        scheduling), where the scheduler waits a step, as Lightning's would; a validation metric
        that validation has not logged (none has run, or there is no validation loader) is
        warned about; any other name (misspelt) is refused."""
        monitor, logged = self.lr_scheduler_monitor, sorted(self.trainer.callback_metrics)
        if monitor in TRAINING_METRICS:
            return
        problem = (f"ReduceLROnPlateau monitors {monitor!r} (lr_scheduler_monitor, --model.lr_scheduler_monitor), "
                   f"which this run has not logged (logged: {', '.join(logged) or 'nothing'})")
        if not monitor.startswith("val/") or any(name.startswith("val/") for name in logged):
            raise ValueError(f"{problem}: monitor one of those")
        warnings.warn(f"{problem}, so the learning rate did not change at this {self.lr_scheduler_interval}: "
                      "give a validation loader (and validate at least as often as the scheduler steps), or "
                      "monitor a training metric (e.g. 'train/loss')", UserWarning, stacklevel=2)

    # -------------------------------------------------------------- evaluation
    def _evaluate(self, batch, stage: str, metric: MulticlassAccuracy) -> Tensor:
        inputs, targets = self.prepare_batch(batch, stage)
        output = self.algorithm.predict(self.network, inputs).detach()  # the algorithm owns its grad mode
        loss_fn = as_loss(self.loss)
        loss = loss_fn.value(output, loss_fn.prepare_targets(targets, output)).detach()
        metric(output, targets)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=inputs.shape[0])
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=inputs.shape[0])
        return loss

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> Tensor:
        return self._evaluate(batch, "test", self.test_acc)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """``{"predictions": class indices, "outputs": the network's outputs}`` of a batch
        (inputs, or (inputs, targets)); ``Trainer.predict`` returns one such dict per batch."""
        inputs, targets = unpack_batch(batch, self.batch_keys, need_targets=False)
        self._check_first_batch("predict", inputs, targets)
        outputs = self.algorithm.predict(self.network, inputs.to(self.network_dtype)).detach()
        return {"predictions": outputs.argmax(-1), "outputs": outputs}

    # ------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError("this module has no optimiser: its checkpoint could not hold the one it was "
                             "trained with (a lambda or a function); pass optimizer= to load_from_checkpoint")
        optimizer = self.optimizer_factory(self.network.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_scheduler_interval}}

    # ------------------------------------------------------------------ edges
    def _check_weights_to_evaluate(self) -> None:
        """Refuse to evaluate weights that were neither trained nor loaded, unless asked to."""
        stage = getattr(self.trainer.state.fn, "value", self.trainer.state.fn)
        if stage == "fit" or self.weights_origin is not None:
            return
        if not self.evaluate_initial_weights:
            raise RefusedValue(f"{stage} has no weights to evaluate, only the untrained ones the "
                               "network was built with: give --ckpt_path (ckpt_path=) of a trained checkpoint, or "
                               "EnergyModule(evaluate_initial_weights=True) (--model.evaluate_initial_weights true) "
                               "to evaluate them as they are")
        if self.trainer.is_global_zero:
            print(f"pl-energy: {stage} evaluates the untrained weights the network was built with "
                  "(evaluate_initial_weights=True, no checkpoint)", file=sys.stderr)

    def on_validation_start(self) -> None:
        self._check_weights_to_evaluate()

    def on_test_start(self) -> None:
        self._check_weights_to_evaluate()

    def on_predict_start(self) -> None:
        self._check_weights_to_evaluate()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``; the weights are then known (``weights_origin``)."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.weights_origin = "loaded"
        return result

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.unsaved_arguments and not getattr(self, "_warned_unsaved", False):
            self._warned_unsaved = True
            warnings.warn(f"the checkpoint cannot hold this module's {' and '.join(self.unsaved_arguments)} "
                          "(a lambda, a function or a custom module): pass them again to "
                          "EnergyModule.load_from_checkpoint, or give a class, a functools.partial or a "
                          "pl_energy.core.networks builder", UserWarning, stacklevel=2)
        # Lightning restores optimiser, schedulers and loop state but not the global RNGs, which
        # seed the train loader's shuffling at the start of every epoch: save them so that a run
        # resumed from an epoch-boundary checkpoint draws the same batches as an uninterrupted one.
        # (Mid-epoch, the train loader keeps the epoch's order and position itself:
        # pl_energy.data.resumable.)
        checkpoint[RNG_KEY] = collect_rng_states()
        checkpoint["pl_energy"] = {"algorithm": self.algorithm_name,
                                   "algorithm_hparams": self.algorithm.hparams()}
        if self.accumulated:  # between two optimiser steps (OnExceptionCheckpoint, a callback's save_checkpoint)
            window = self._open_window()
            if window is not None:
                checkpoint[WINDOW_KEY] = window

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get(RNG_KEY)
        if states is not None and self._trainer is not None and self.trainer.training:
            set_rng_states(states)
            self._resumed_window = checkpoint.get(WINDOW_KEY)
        saved = checkpoint.get("pl_energy")
        if saved:
            now = {"algorithm": self.algorithm_name, "algorithm_hparams": self.algorithm.hparams()}
            differs = [f"{key}: {saved.get(key)} -> {now[key]}" for key in now if saved.get(key) != now[key]]
            if differs:
                warnings.warn("this checkpoint was trained with other settings than this run uses ("
                              + "; ".join(differs) + ")", UserWarning, stacklevel=2)

    def _open_window(self) -> dict[str, Any] | None:
        """What a checkpoint saved inside an accumulation window holds to resume it exactly: the
        batches summed so far, the window's length and their gradients (``p.grad``, each batch's
        already divided by the length). None under several processes, each of which holds a
        partial sum of its own while the checkpoint is rank 0's: the resumed run then starts the
        window again, which is warned about."""
        if self.trainer.world_size > 1:
            warnings.warn(f"this checkpoint is saved inside an accumulation window ({self.accumulated} of "
                          f"{self.accumulate_grad_batches} batches) under {self.trainer.world_size} processes, whose "
                          "partial gradients it cannot hold: a run resumed from it starts the window again, without "
                          "those batches' gradients", UserWarning, stacklevel=3)
            return None
        return {"batches": self.accumulated, "length": self.accumulate_grad_batches,
                "gradients": {name: p.grad.detach().clone() for name, p in self.network.named_parameters()
                              if p.grad is not None}}

    def _continue_window(self, window: dict[str, Any]) -> int:
        """Put a resumed checkpoint's open window back (``_open_window``): its gradients into
        ``p.grad``; returns its batch count (0, with a warning, where the window's length is not
        this run's ``accumulate_grad_batches``: its sum was divided by another length)."""
        if window["length"] != self.accumulate_grad_batches:
            warnings.warn(f"the checkpoint was saved inside an accumulation window of {window['length']} batches "
                          f"({window['batches']} summed), but this run accumulates {self.accumulate_grad_batches}: "
                          "those batches' gradients are dropped and the run starts a new window", UserWarning,
                          stacklevel=3)
            return 0
        gradients = window["gradients"]
        for name, p in self.network.named_parameters():
            if name in gradients:
                p.grad = gradients[name].to(device=p.device, dtype=p.dtype)
        return int(window["batches"])

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's ``load_from_checkpoint``; a new ``algorithm=`` starts from its own defaults
        (pass ``algorithm_hparams`` to set them) instead of inheriting the saved algorithm's."""
        check_checkpoint_file(checkpoint_path)
        if "algorithm" in kwargs:
            from lightning.fabric.utilities.cloud_io import _load  # local paths, URLs and fsspec alike

            saved = _load(checkpoint_path, map_location="cpu", weights_only=False).get("hyper_parameters", {})
            if saved.get("algorithm") not in (None, kwargs["algorithm"]) and "algorithm_hparams" not in kwargs:
                kwargs["algorithm_hparams"] = None
            if "activation" not in kwargs and "network" not in kwargs:
                kwargs["activation"] = trained_activation(saved)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)


def trained_activation(hparams: dict[str, Any]) -> str | None:
    """The hidden units a saved module's default MLP was built with: its ``activation``, or,
    where it is None (the CLI's configurations and earlier checkpoints), its algorithm's default;
    None for a module given its own network."""
    if hparams.get("activation") is not None or hparams.get("network") is not None:
        return hparams.get("activation")
    return algorithm_from(hparams.get("algorithm") or "pc_nudge", hparams.get("algorithm_hparams")).default_activation


def collect_rng_states() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, Python, NumPy) in a form that
    ``torch.load(weights_only=True)`` accepts (tensors, lists, numbers, strings)."""
    import random

    import numpy as np

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`collect_rng_states` saved."""
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    cuda = states.get("torch.cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _output_width(network: nn.Module) -> int | None:
    """The ``out_features`` of the network's last module that has one (``Linear``, ``ScaledLinear``)."""
    width = None
    for module in network.modules():
        if isinstance(getattr(module, "out_features", None), int):
            width = module.out_features
    return width


def _energy_figure(data, algorithm: Algorithm, step: int):
    return energy_trace_figure(
        data, title=f"{algorithm.name}: energy per inference step of {algorithm.traced_phase}, "
                    f"training step {step}", weight=algorithm.supervised_weight)
