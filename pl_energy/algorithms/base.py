"""What every algorithm gives: an estimate of d(loss)/d(theta) in backprop's units and sign.

The interface: :class:`Estimate`, :class:`Algorithm` and :class:`RelaxingAlgorithm`. The checks
``Algorithm.estimate`` runs live in :mod:`~pl_energy.algorithms.validation`, the warnings in
:mod:`~pl_energy.algorithms.warnings`, backprop's gradients and the naming of per-layer ones in
:mod:`~pl_energy.algorithms.gradients`."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.forward_semantics import FixedForward, fixed_forward
from ..core.inference import InferenceReport, Relaxation, check_settings, relax
from ..core.losses import Loss, as_loss
from ..core.structure import checked_structure, structure_of
from ..core.trace import InferenceTrace
from .gradients import backprop_gradients, name_layer_gradients
from .validation import (check_batch, check_dtype, check_estimate_error, check_hyperparameter_types,
                         check_precision, non_finite_error, refuse_batch_statistics)
from .warnings import BATCH_STATISTICS, BatchStatisticsWarning, warn_if_not_converged

__all__ = ["Algorithm", "Estimate", "RelaxingAlgorithm"]

#: How many recent batches' Dropout masks and BatchNorm statistics are kept for their references
#: (gradient accumulation compares the mean of that many batches).
REMEMBERED_BATCHES = 16


@dataclass
class Estimate:
    """An algorithm's estimate of d(loss)/d(theta) on one batch (``Algorithm.estimate``).

    ``gradients`` is keyed like ``network.named_parameters()`` (trainable ones); ``output`` is
    the free-phase prediction and ``loss`` its batch-mean loss; ``trace`` the energies per step
    of the phase the estimate is read at (None unless recorded); ``inference`` one report per
    inference phase, in the order they ran (empty for algorithms without inference).

    ``nudge`` is the nudge strength the estimate was read with (lam or beta; chosen per batch
    when set to "auto"), None for algorithms without one. ``error_bound`` is the estimate's
    a-posteriori relative error per layer (keyed by the layer's name among the network's
    children): ||g_l - g_l^0|| / ||g_l^0|| with g^0 the update of the limit of a vanishing
    nudge, the linear response at the free equilibrium, which the algorithm computes from its
    own first-order response (``pl_energy.core.nudge``); None where it is not computed. For the
    predictive-coding family that limit is backprop's gradient (Millidge et al. 2022 Eq. 16), so
    the bound covers every source of error of the estimate (finite nudge, stopping early, steps
    settled on kinks) except rounding in the limit itself. Centered EP gives an estimate of it
    instead, the distance of its one-sided half (``EquilibriumPropagation``), and chl, with
    ``error_estimate=True``, the distance of its first-order term (``ContrastiveHebbian``).
    """

    gradients: dict[str, Tensor]
    output: Tensor
    loss: Tensor
    trace: InferenceTrace | None = None
    inference: tuple[InferenceReport, ...] = ()
    nudge: float | None = None
    error_bound: dict[str, float] | None = None

    @classmethod
    def from_layers(cls, network: nn.Module, per_layer: list[list[Tensor]], output: Tensor,
                    loss: Loss, targets: Tensor, trace: InferenceTrace | None = None,
                    inference: tuple[InferenceReport, ...] = (), nudge: float | None = None,
                    error_bound: dict[str, float] | None = None) -> "Estimate":
        """From per-layer gradients (``layer.parameters()`` order), the free-phase output and
        the targets as the energy prepared them."""
        return cls(name_layer_gradients(network, per_layer), output, loss.value(output, targets),
                   trace, inference, nudge, error_bound)

    @property
    def worst_error(self) -> tuple[str, float] | None:
        """(layer, relative error) of the layer with the largest ``error_bound``, or None."""
        if not self.error_bound:
            return None
        layer = max(self.error_bound, key=self.error_bound.__getitem__)
        return layer, self.error_bound[layer]

    @property
    def converged(self) -> bool:
        """Every inference phase reached its tolerance (True when there was no inference)."""
        return all(report.converged for report in self.inference)


class Algorithm:
    """Base class. Subclasses are dataclasses of hyper-parameters implementing ``compute``; a
    subclass that sets ``name`` is registered under it (``pl_energy.build_algorithm(name)``,
    ``--algorithm name``) when its module is imported: every module of ``pl_energy.algorithms``
    is."""

    #: Every concrete algorithm by name, in the order their classes were defined.
    registered: ClassVar[dict[str, type[Algorithm]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if isinstance(name, str):
            if name in Algorithm.registered and Algorithm.registered[name].__qualname__ != cls.__qualname__:
                raise TypeError(f"two algorithms are named {name!r}: {Algorithm.registered[name].__qualname__} "
                                f"and {cls.__qualname__}")
            Algorithm.registered[name] = cls

    name: ClassVar[str]
    #: Whether the estimate is a small difference of relaxed states, accurate only in 32 or 64
    #: bits: such algorithms run outside autocast and refuse half-precision parameters.
    precision_sensitive: ClassVar[bool] = False
    #: Whether the algorithm evaluates layers more than once per batch, so that Dropout masks
    #: and BatchNorm statistics are fixed for the batch (``core.forward_semantics``); its
    #: ``reference`` then uses the same masks and statistics (the statistics as constants).
    one_forward_per_batch: ClassVar[bool] = True
    #: Whether ``compute`` records its own autograd graph (bp), so that it does not run under
    #: ``no_grad`` (switching grad mode off and on again around a recorded pass costs ~2% of bp's
    #: time on Millidge et al. 2022's MLP).
    records_graph: ClassVar[bool] = False
    #: The hidden activation of the default network (``pl_energy.mlp``) for this algorithm.
    default_activation: ClassVar[str] = "relu"
    #: The phase a recorded trace shows, and the symbol of the supervised term's weight in it.
    traced_phase: ClassVar[str] = "inference"
    supervised_weight: ClassVar[str] = "\N{GREEK SMALL LETTER LAMDA}"
    #: Train a network with BatchNorm in training mode all the same, each batch's statistics held
    #: constant (``BatchStatisticsWarning``); refused while False (``EnergyModule``'s
    #: ``allow_constant_batch_statistics`` sets it). Not a hyper-parameter: it changes no number.
    allow_constant_batch_statistics: ClassVar[bool] = False
    #: The forward semantics of the latest batches, for their references (``same_forward``).
    _forwards: dict[int, tuple[weakref.ref, FixedForward]] | None = None

    def __post_init__(self):
        check_hyperparameter_types(self)

    def estimate(self, network: nn.Module, inputs: Tensor, targets: Tensor,
                 loss: str | Loss = "cross_entropy", record: bool | None = None) -> Estimate:
        """The algorithm's estimate on a batch (its phases of inference and the update read off
        them), with the checks every algorithm shares; ``record`` overrides the ``trace``
        setting."""
        loss = as_loss(loss)
        check_batch(inputs, targets)
        with checked_structure(network) as structure:  # the tree does not change while it runs
            parameter = structure.first_parameter
            check_dtype(parameter, inputs)
            check_precision(self, network, parameter)
            self._check_layers(network)
            if self.one_forward_per_batch and not self.allow_constant_batch_statistics:
                refuse_batch_statistics(self.name, network)
            record = getattr(self, "trace", False) if record is None else record
            # phases never build graphs (autograd paths enable it locally); a difference of relaxed
            # states is computed in the parameters' dtype, never under autocast
            semantics = fixed_forward(network) if self.one_forward_per_batch else contextlib.nullcontext()
            graphs = contextlib.nullcontext() if self.records_graph else torch.no_grad()
            with graphs, self._precision(inputs), semantics as frozen:
                estimate = self.compute(network, inputs, targets, loss, record)
        if frozen is not None and frozen.layers:  # only networks with Dropout or BatchNorm
            if any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in frozen.layers):
                warnings.warn(BATCH_STATISTICS, BatchStatisticsWarning, stacklevel=2)
            forwards = self._forwards = self._forwards if self._forwards is not None else {}
            forwards[id(inputs)] = (weakref.ref(inputs), frozen)  # the batch itself is not kept
            while len(forwards) > REMEMBERED_BATCHES:
                del forwards[next(iter(forwards))]
        if not math.isfinite(estimate.loss.item()):
            raise non_finite_error(network, inputs)
        check_estimate_error(self, estimate)
        return estimate

    def gradients(self, network: nn.Module, inputs: Tensor, targets: Tensor,
                  loss: str | Loss = "cross_entropy") -> dict[str, Tensor]:
        """The estimate of d(loss)/d(theta), keyed like ``network.named_parameters()``."""
        return self.estimate(network, inputs, targets, loss).gradients

    def reference(self, network: nn.Module, inputs: Tensor, targets: Tensor,
                  loss: str | Loss = "cross_entropy") -> dict[str, Tensor]:
        """The exact gradient this algorithm approximates: backprop through the network (in the
        parameters' dtype, also under autocast: a reference is a measurement)."""
        loss = as_loss(loss)
        check_batch(inputs, targets)
        with torch.autocast(inputs.device.type, enabled=False), self.same_forward(network, inputs):
            return backprop_gradients(network, inputs, targets, loss)[0]

    def predict(self, network: nn.Module, inputs: Tensor) -> Tensor:
        """The free-phase output (the feedforward pass unless the algorithm says otherwise)."""
        return network(inputs)

    def compute(self, network: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss,
                record: bool) -> Estimate:
        """The algorithm's own computation, under ``no_grad`` (unless ``records_graph``) and its
        precision and forward semantics (``estimate`` wraps it with the checks)."""
        raise NotImplementedError

    def hparams(self) -> dict[str, Any]:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def nudge(self, network: nn.Module) -> float | None:
        """The relative size of the displacement the estimate is read from (lam, beta, ...), or
        None when the algorithm's estimate is not a difference of nudged states."""
        return None

    def same_forward(self, network: nn.Module, inputs: Tensor):
        """The forward semantics of ``inputs``: the Dropout masks and BatchNorm statistics that
        ``estimate`` used on this very batch (one of the latest ``REMEMBERED_BATCHES``), so that a
        reference differentiates the function the estimate was read from; else those of a fresh
        forward pass."""
        if not self.one_forward_per_batch:
            return contextlib.nullcontext()  # bp: its own single forward pass, as autograd has it
        known = (self._forwards or {}).get(id(inputs))
        if known is not None and known[0]() is inputs and set(known[1].layers) == set(FixedForward(network).layers):
            return known[1].replay()
        return fixed_forward(network, update_running=False)  # a reference must not move the running statistics

    def _check_layers(self, network: nn.Module) -> None:
        """Warn about layers that are probably not meant as layers (see ``RelaxingAlgorithm``)."""

    def _precision(self, inputs: Tensor):
        """A context in which the estimate runs: autocast off for precision-sensitive ones."""
        if not self.precision_sensitive:
            return contextlib.nullcontext()
        return torch.autocast(inputs.device.type, enabled=False)

@dataclass
class RelaxingAlgorithm(Algorithm):
    """An algorithm with inference phases, each relaxed by a solver (``pl_energy.core.solvers``).

    Args:
        solver: "gd" (descent on the activities: the papers' dynamics), "error" (descent on
            the prediction errors, PC only), "anderson" ("error" with Anderson mixing),
            "newton" (truncated Newton on the errors, PC only), "nesterov", "sweep" or
            "adaptive_sweep" (even/odd layer blocks, Hopfield only).
        steps: the step cap of each phase; the exact number of steps when ``tol`` is None.
        step_size: the solver's step (None: its default); "auto" halves it whenever the
            energy rises instead of raising ``DivergenceError``.
        tol: stop a phase at this relative residual (``pl_energy.core.solvers``); None runs
            exactly ``steps`` steps.
        trace: record the energy of every inference step (a pass over the state per step).
        allow_imprecise: return, with a warning, an estimate whose nudge is below 10 machine
            epsilons (rounding 10% or more) instead of refusing it.
    """

    precision_sensitive: ClassVar[bool] = True
    solver: str = "gd"
    steps: int = 50
    step_size: float | str | None = None
    tol: float | None = None
    trace: bool = False
    allow_imprecise: bool = False
    #: ``torch.compile``'s options for the inference steps (``core.compiled_steps``) and, for
    #: pc_nudge's default estimate, the whole estimate (``algorithms.graph_estimate``); None:
    #: eager (``EnergyModule(compile=...)`` sets it). Not a hyper-parameter: numbers change by
    #: rounding only.
    compile_inference: ClassVar[dict[str, Any] | None] = None

    def __post_init__(self):
        check_settings(self.solver, self.steps, self.step_size, self.tol)  # the precise messages first
        super().__post_init__()
        if self.steps == 0:
            warnings.warn(f"{self.name}: steps=0 runs no inference, so no signal reaches a hidden layer and "
                          "their updates are 0 (the t = 0 point of Song et al. 2020's Fig. 3); set steps >= 1 "
                          "to learn", UserWarning, stacklevel=3)

    def _check_layers(self, network: nn.Module) -> None:
        """A top-level child without parameters becomes a layer of the energy, with an activity
        of its own to relax: almost always a CNN written flat, which is warned about. (Dropout
        and BatchNorm keep one mask and one set of statistics per batch: ``core.forward_semantics``.)"""
        structure = structure_of(network)
        for index, ((_, layer), parameters) in enumerate(zip(structure.children, structure.child_parameters), start=1):
            if not parameters:
                warnings.warn(
                    f"layer {index} ({type(layer).__name__}) has no parameters: every top-level child of the "
                    f"network is one layer of {self.name}'s energy, with its own activity to relax; group "
                    "parameter-free modules with the layer before them, e.g. Sequential(Conv2d, ReLU, "
                    "MaxPool2d) (a CNN written flat measured cosine 0.958 with BP against 0.9987 grouped, "
                    "and ran 3.3x slower)", UserWarning, stacklevel=4)

    def relax(self, energy, state, record: bool = False, steps: int | None = None,
              tol: float | None = None, measured_from=None, warn: bool = True) -> Relaxation:
        """One inference phase on ``state`` in place (see ``core.relax``; ``tol`` overrides the
        algorithm's, ``measured_from`` measures the residual against the change since that state);
        warns once per process when a tolerance was asked for and not reached (unless ``warn`` is
        False: the caller has another try, and warns itself)."""
        tol = self.tol if tol is None else tol
        relaxation = relax(energy, state, self.steps if steps is None else steps, self.step_size,
                           tol, record, self.solver, measured_from=measured_from, compile=self.compile_inference)
        if warn:
            warn_if_not_converged(relaxation.report, stacklevel=2)
        return relaxation
