"""What every algorithm gives: an estimate of d(loss)/d(theta) in backprop's units and sign."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import typing
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

import warnings

from ..core.forward_semantics import FixedForward, fixed_forward
from ..core.inference import InferenceReport, Relaxation, check_settings, relax
from ..core.losses import Loss, as_loss
from ..core.networks import feedforward
from ..core.trace import InferenceTrace
from ..errors import RefusedType, RefusedValue


class NotConvergedWarning(UserWarning):
    """Inference stopped (step cap, or settled on kinks) before its residual reached the tolerance."""


class BatchStatisticsWarning(UserWarning):
    """A BatchNorm in training mode: the update treats the batch statistics as constants."""


BATCH_STATISTICS = (
    "BatchNorm in training mode: the update of an energy-based algorithm is the gradient with this "
    "batch's statistics held constant (inference re-evaluates the layers many times, so one set of "
    "statistics is fixed per batch), not backprop through the statistics as bp computes it; its "
    "agreement with its reference says nothing about that difference. On a BatchNorm ResNet on MNIST "
    "z_il reached 37% after one epoch where bp reached 98%: compare with bp, or leave BatchNorm out "
    "(or in eval mode)")


class EstimateErrorWarning(UserWarning):
    """The estimate's own error bound (``Estimate.error_bound``) exceeds its tolerance."""


class PrecisionWarning(UserWarning):
    """The nudge is so weak that the dtype's rounding is a large part of the estimate."""


#: Cosine of the bfloat16 estimate with the float32 reference (Millidge et al. 2022's MLP, one MNIST batch of
#: 64, default settings), for the message that refuses half precision (before this check such
#: estimates were returned without a word).
HALF_PRECISION_COSINE = {"pc_nudge": 0.74, "pc": 0.76, "ep": 0.96, "chl": 0.56}
#: How many recent batches' Dropout masks and BatchNorm statistics are kept for their references
#: (gradient accumulation compares the mean of that many batches).
REMEMBERED_BATCHES = 16
#: A nudge whose displacement is below this many machine epsilons is warned about (rounding
#: about 0.1% of the estimate) ...
RESOLVED_NUDGE = 1e3
#: ... and below this many refused unless allowed (rounding 10% or more: far off).
REFUSED_NUDGE = 10


NOT_CONVERGED = (
    "inference stopped before its residual reached tol, so this estimate is read off a state that "
    "may be short of equilibrium: the step cap was hit (raise steps, loosen tol, or use a faster "
    "solver: 'error' for pc and pc_nudge, 'nesterov' or 'sweep' for ep and chl), or the damped "
    "steps settled on the kinks of a ReLU/max-pool energy, where the residual cannot vanish and "
    "the update depends on the slope taken at each kink (a smooth activation avoids it); "
    "Estimate.inference has the residual"
)


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
    settled on kinks) except rounding in the limit itself.
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
        parameter = next(network.parameters(), None)  # one walk over the modules, for both checks
        _check_dtype(parameter, inputs)
        self._check_precision(network, parameter)
        self._check_layers(network)
        if self.one_forward_per_batch and not self.allow_constant_batch_statistics:
            _refuse_batch_statistics(self.name, network)
        record = getattr(self, "trace", False) if record is None else record
        # phases never build graphs (autograd paths enable it locally); a difference of relaxed
        # states is computed in the parameters' dtype, never under autocast
        semantics = fixed_forward(network) if self.one_forward_per_batch else contextlib.nullcontext()
        with torch.no_grad(), self._precision(inputs), semantics as frozen:
            estimate = self.compute(network, inputs, targets, loss, record)
        if frozen is not None and frozen.layers:  # only networks with Dropout or BatchNorm
            if any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in frozen.layers):
                warnings.warn(BATCH_STATISTICS, BatchStatisticsWarning, stacklevel=2)
            forwards = self._forwards = self._forwards if self._forwards is not None else {}
            forwards[id(inputs)] = (weakref.ref(inputs), frozen)  # the batch itself is not kept
            while len(forwards) > REMEMBERED_BATCHES:
                del forwards[next(iter(forwards))]
        if not math.isfinite(estimate.loss.item()):
            raise _non_finite(network, inputs)
        self._check_error(estimate)
        return estimate

    def _check_error(self, estimate: Estimate) -> None:
        """Warn when the estimate's worst layer is further from its limit than ``error_tolerance``
        (for algorithms that have one and compute ``Estimate.error_bound``)."""
        tolerance, worst = getattr(self, "error_tolerance", None), estimate.worst_error
        if tolerance is not None and worst is not None and worst[1] > tolerance:
            warnings.warn(
                f"{self.name}'s estimate is {worst[1]:.1%} off its vanishing-nudge limit (backprop's "
                f"gradient) in layer {worst[0]}, above error_tolerance={tolerance:g} (nudge {estimate.nudge:.3g}, "
                f"inference converged: {estimate.converged}): use lam='auto', centered=True or a tighter "
                "tol; Estimate.error_bound has every layer", EstimateErrorWarning, stacklevel=3)

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
        """The algorithm's own computation, under ``no_grad`` and its precision and forward
        semantics (``estimate`` wraps it with the checks)."""
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

    def _check_precision(self, network: nn.Module, parameter: Tensor | None) -> None:
        """Refuse half precision and nudges below the dtype's resolution (``parameter``: the
        network's first parameter, None without any)."""
        if parameter is None or not self.precision_sensitive:
            return
        if parameter.dtype in (torch.float16, torch.bfloat16):
            measured = HALF_PRECISION_COSINE.get(self.name)
            evidence = ("" if measured is None else f" (in bfloat16 its cosine with the exact float32 "
                                                    f"gradient measured {measured} on MNIST)")
            raise RefusedType(
                f"{self.name} reads its update from a small difference of relaxed states, which "
                f"{parameter.dtype} cannot resolve{evidence}; train in float32 or float64 (Trainer precision "
                "'32-true' or '64-true'; the mixed modes are fine, inference runs outside autocast), or use z_il/bp")
        nudge = self.nudge(network)
        epsilon = torch.finfo(parameter.dtype).eps
        if nudge is not None and abs(nudge) < RESOLVED_NUDGE * epsilon:
            problem = (f"{self.name}'s nudge displaces the state by about {abs(nudge):.1e} of its size, only "
                       f"{abs(nudge) / epsilon:.0f} machine epsilons of {parameter.dtype}: rounding is then a large "
                       "part of the estimate (ep at beta 1e-12 in float32 measured 2.5e5 relative error)")
            if abs(nudge) < REFUSED_NUDGE * epsilon and not getattr(self, "allow_imprecise", False):
                raise ValueError(f"{problem}; use a larger nudge, 'auto', or float64 parameters "
                                 "(allow_imprecise=True returns it anyway, with a PrecisionWarning)")
            warnings.warn(f"{problem}; use a larger nudge or float64 parameters", PrecisionWarning, stacklevel=3)


def check_hyperparameter_types(algorithm: Algorithm) -> None:
    """Refuse a hyper-parameter whose value does not fit its declared type (``float`` means a
    finite real number, not a bool; ``bool`` a bool, not the string 'no'), in one line."""
    if not dataclasses.is_dataclass(algorithm):
        return
    for field in dataclasses.fields(algorithm):
        value = getattr(algorithm, field.name)
        allowed = _type_names(field.type)
        if not allowed <= {"None", "bool", "str", "int", "float"}:
            continue  # a type this check does not know (a subclass's own): its class checks it
        if value is None:
            fits = "None" in allowed
        elif isinstance(value, bool):
            fits = "bool" in allowed
        elif isinstance(value, str):
            fits = "str" in allowed
        elif isinstance(value, numbers.Integral):
            fits = bool({"int", "float"} & allowed)
        elif isinstance(value, numbers.Real):
            fits = "float" in allowed and math.isfinite(value)
        else:
            fits = False
        if not fits:
            raise ValueError(f"{algorithm.name}: {field.name} must be {' | '.join(sorted(allowed))} (finite), "
                             f"got {value!r}")


def _type_names(annotation) -> set[str]:
    """{'float', 'None', ...} of an annotation, written as a string (``from __future__ import
    annotations``) or as the types themselves."""
    if isinstance(annotation, str):
        return {part.strip() for part in annotation.split("|")}
    if isinstance(annotation, type):
        return {"None" if annotation is type(None) else annotation.__name__}
    return set().union(*(_type_names(arg) for arg in typing.get_args(annotation))) or {repr(annotation)}


def backprop_gradients(network: nn.Module, inputs: Tensor, targets: Tensor,
                       loss: Loss) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Plain autograd: (gradients, output, loss value)."""
    named = [(name, p) for name, p in network.named_parameters() if p.requires_grad]
    with torch.enable_grad():
        # layer by layer, so that a shape error names the layer (the energy algorithms' way)
        output = feedforward(list(network.children()), inputs)[-1] if isinstance(network, nn.Sequential) \
            else network(inputs)
        if loss.name == "cross_entropy" and targets.dim() == 1 and output.dim() == 2:
            if targets.is_floating_point() or (targets.numel() and not 0 <= int(targets.min()) <= int(targets.max())
                                               < output.shape[-1]):
                loss.prepare_targets(targets, output)  # raises, naming the problem (torch would skip -100)
            value = loss.value(output, targets.long())  # class indices, in range (checked above)
        else:
            value = loss.value(output, loss.prepare_targets(targets, output))
        grads = torch.autograd.grad(value, [p for _, p in named], allow_unused=True)
    gradients = {
        name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(named, grads)
    }
    return gradients, output.detach(), value.detach()


def layer_relative_errors(network: nn.Module, estimate: list[list[Tensor]],
                          reference: list[list[Tensor]]) -> dict[str, float]:
    """||u_l - r_l|| / ||r_l|| per layer (over the layer's parameters), keyed by the layer's name
    among ``network``'s children; a layer whose reference is 0 reads |u_l| (0 when both vanish).
    The norms are taken in the parameters' dtype and read back once."""
    names = [name for name, _ in network.named_children()]
    upper = [u for layer in estimate for u in layer]
    lower = [r for layer in reference for r in layer]
    if not upper:
        return {}
    differences = torch.stack(torch._foreach_norm(torch._foreach_sub(upper, lower))).double()
    sizes = torch.stack(torch._foreach_norm(lower)).double()
    counts = torch.tensor([len(layer) for layer in reference], device=sizes.device)
    owner = torch.repeat_interleave(torch.arange(len(reference), device=sizes.device), counts)
    difference = torch.zeros(len(reference), dtype=torch.float64, device=sizes.device).index_add_(
        0, owner, differences.square()).sqrt()
    size = torch.zeros_like(difference).index_add_(0, owner, sizes.square()).sqrt()
    ratio = torch.where(size > 0, difference / size.clamp_min(torch.finfo(torch.float64).tiny), difference)
    return dict(zip(names, ratio.tolist()))


def name_layer_gradients(network: nn.Module, per_layer: list[list[Tensor]]) -> dict[str, Tensor]:
    """Turn per-layer gradient lists (in ``layer.parameters()`` order) into a dict keyed like
    ``network.named_parameters()``.

    A parameter used by several layers (tied weights) is listed once there, under its first
    name, and gets the sum of every use's gradient, as backprop gives it. Frozen parameters
    (``requires_grad=False``) are left out, as backprop leaves them out.
    """
    names = {id(parameter): name for name, parameter in network.named_parameters()}
    gradients: dict[str, Tensor] = {}
    for (child, layer), grads in zip(network.named_children(), per_layer):
        parameters = list(layer.parameters())
        if len(parameters) != len(grads):
            raise RuntimeError(f"layer {child} has {len(parameters)} parameters but {len(grads)} gradients")
        for parameter, grad in zip(parameters, grads):
            if parameter.requires_grad:
                name = names[id(parameter)]
                gradients[name] = gradients[name] + grad if name in gradients else grad
    return gradients


def check_batch(inputs: Tensor, targets: Tensor) -> None:
    if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
        raise TypeError("inputs and targets must be tensors")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("energy-based algorithms (and bp) compute gradients, which torch.inference_mode() "
                           "forbids: call them outside it (torch.no_grad() is fine)")
    if inputs.dim() == 0 or targets.dim() == 0:
        raise ValueError("inputs and targets need a batch dimension")
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"inputs have batch size {inputs.shape[0]} but targets {targets.shape[0]}")
    if inputs.shape[0] == 0:
        raise ValueError("the batch is empty (0 samples): skip it, or check the sampler and drop_last")


def _non_finite(network: nn.Module, inputs: Tensor) -> ValueError:
    """Explain a non-finite loss (checked once per step, so the hot path stays free of checks)."""
    if inputs.is_floating_point() and not torch.isfinite(inputs).all():
        return ValueError("inputs contain NaN or Inf; clean the data before training")
    bad = [name for name, p in network.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        return ValueError(f"parameters {bad} contain NaN or Inf: training diverged; lower the "
                          "learning rate or clip the updates (EnergyModule gradient_clip_val, --trainer.gradient_clip_val)")
    return ValueError("the loss is NaN or Inf although inputs and parameters are finite; check "
                      "the targets and the network's outputs")


def _refuse_batch_statistics(name: str, network: nn.Module) -> None:
    """Refuse a BatchNorm that normalises with the batch's own statistics (training mode, or no
    running statistics): the energy algorithms hold them constant, which is not backprop's
    gradient through them, and the difference is large."""
    for layer, module in network.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or module.running_mean is None):
            raise RefusedValue(
                f"{name} with BatchNorm in training mode ({layer}): its update holds each batch's statistics "
                "constant instead of backpropagating through them (cosine 0.38 with bp's gradient under pc_nudge; "
                "z_il reached 37% on a BatchNorm ResNet where bp reached 98%): put BatchNorm in eval mode, leave it "
                "out, or train with bp; to accept it, EnergyModule(allow_constant_batch_statistics=True) "
                "(--model.allow_constant_batch_statistics true; algorithm.allow_constant_batch_statistics = True)")


def _check_dtype(parameter: Tensor | None, inputs: Tensor) -> None:
    if parameter is not None and inputs.is_floating_point() and inputs.dtype != parameter.dtype:
        raise TypeError(
            f"inputs are {inputs.dtype} but the network's parameters are {parameter.dtype}; cast "
            "one to the other (e.g. inputs.to(next(network.parameters()).dtype))"
        )


@dataclass
class RelaxingAlgorithm(Algorithm):
    """An algorithm with inference phases, each relaxed by a solver (``pl_energy.core.solvers``).

    Args:
        solver: "gd" (descent on the activities: the papers' dynamics), "error" (descent on
            the prediction errors, PC only), "anderson" ("error" with Anderson mixing),
            "nesterov" or "sweep" (even/odd layer blocks, Hopfield only).
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
        for index, layer in enumerate(network.children(), start=1):
            if next(layer.parameters(), None) is None:
                warnings.warn(
                    f"layer {index} ({type(layer).__name__}) has no parameters: every top-level child of the "
                    f"network is one layer of {self.name}'s energy, with its own activity to relax; group "
                    "parameter-free modules with the layer before them, e.g. Sequential(Conv2d, ReLU, "
                    "MaxPool2d) (a CNN written flat measured cosine 0.958 with BP against 0.9987 grouped, "
                    "and ran 3.3x slower)", UserWarning, stacklevel=4)

    def relax(self, energy, state, record: bool = False, steps: int | None = None,
              tol: float | None = None, from_start: bool = False) -> Relaxation:
        """One inference phase on ``state`` in place (see ``core.relax``; ``tol`` overrides the
        algorithm's, ``from_start`` measures the residual against the change since the start);
        warns once per process when a tolerance was asked for and not reached."""
        tol = self.tol if tol is None else tol
        relaxation = relax(energy, state, self.steps if steps is None else steps, self.step_size,
                           tol, record, self.solver, from_start=from_start)
        if tol is not None and not relaxation.report.converged:
            warnings.warn(NOT_CONVERGED, NotConvergedWarning, stacklevel=2)
        return relaxation
