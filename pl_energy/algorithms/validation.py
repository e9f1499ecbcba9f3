"""The checks every algorithm's estimate passes (``Algorithm.estimate``): the batch, the dtype,
the precision of the nudge, BatchNorm's batch statistics, the hyper-parameters' types, a
non-finite loss, and the estimate's own error bound. Each refuses in one line that says what to
do, or warns (:mod:`pl_energy.algorithms.warnings`)."""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..core.structure import structure_of
from ..errors import RefusedType, RefusedValue
from .warnings import EstimateErrorWarning, PrecisionWarning

if TYPE_CHECKING:
    from .base import Algorithm, Estimate


#: Cosine of the bfloat16 estimate with the float32 reference (Millidge et al. 2022's MLP, one MNIST batch of
#: 64, default settings), for the message that refuses half precision (before this check such
#: estimates were returned without a word).
HALF_PRECISION_COSINE = {"pc_nudge": 0.74, "pc": 0.76, "ep": 0.96, "chl": 0.56}
#: A nudge whose displacement is below this many machine epsilons is warned about (rounding
#: about 0.1% of the estimate) ...
RESOLVED_NUDGE = 1e3
#: ... and below this many refused unless allowed (rounding 10% or more: far off).
REFUSED_NUDGE = 10


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


def non_finite_error(network: nn.Module, inputs: Tensor) -> ValueError:
    """Explain a non-finite loss (checked once per step, so the hot path stays free of checks)."""
    if inputs.is_floating_point() and not torch.isfinite(inputs).all():
        return ValueError("inputs contain NaN or Inf; clean the data before training")
    bad = [name for name, p in network.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        return ValueError(f"parameters {bad} contain NaN or Inf: training diverged; lower the "
                          "learning rate or clip the updates (EnergyModule gradient_clip_val, --trainer.gradient_clip_val)")
    return ValueError("the loss is NaN or Inf although inputs and parameters are finite; check "
                      "the targets and the network's outputs")


def refuse_batch_statistics(name: str, network: nn.Module) -> None:
    """Refuse a BatchNorm that normalises with the batch's own statistics (training mode, or no
    running statistics): the energy algorithms hold them constant, which is not backprop's
    gradient through them, and the difference is large."""
    for layer, module in structure_of(network).named_modules(network):
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or module.running_mean is None):
            raise RefusedValue(
                f"{name} with BatchNorm in training mode ({layer}): its update holds each batch's statistics "
                "constant instead of backpropagating through them (cosine 0.38 with bp's gradient under pc_nudge; "
                "z_il reached 37% on a BatchNorm ResNet where bp reached 98%): put BatchNorm in eval mode, leave it "
                "out, or train with bp; to accept it, EnergyModule(allow_constant_batch_statistics=True) "
                "(--model.allow_constant_batch_statistics true; algorithm.allow_constant_batch_statistics = True)")


def check_dtype(parameter: Tensor | None, inputs: Tensor) -> None:
    if parameter is not None and inputs.is_floating_point() and inputs.dtype != parameter.dtype:
        raise TypeError(
            f"inputs are {inputs.dtype} but the network's parameters are {parameter.dtype}; cast "
            "one to the other (e.g. inputs.to(next(network.parameters()).dtype))"
        )


def check_precision(algorithm: Algorithm, network: nn.Module, parameter: Tensor | None) -> None:
    """Refuse half precision and nudges below the dtype's resolution (``parameter``: the
    network's first parameter, None without any)."""
    if parameter is None or not algorithm.precision_sensitive:
        return
    if parameter.dtype in (torch.float16, torch.bfloat16):
        measured = HALF_PRECISION_COSINE.get(algorithm.name)
        evidence = ("" if measured is None else f" (in bfloat16 its cosine with the exact float32 "
                                                f"gradient measured {measured} on MNIST)")
        raise RefusedType(
            f"{algorithm.name} reads its update from a small difference of relaxed states, which "
            f"{parameter.dtype} cannot resolve{evidence}; train in float32 or float64 (Trainer precision "
            "'32-true' or '64-true'; the mixed modes are fine, inference runs outside autocast), or use z_il/bp")
    nudge = algorithm.nudge(network)
    epsilon = torch.finfo(parameter.dtype).eps
    if nudge is not None and abs(nudge) < RESOLVED_NUDGE * epsilon:
        problem = (f"{algorithm.name}'s nudge displaces the state by about {abs(nudge):.1e} of its size, only "
                   f"{abs(nudge) / epsilon:.0f} machine epsilons of {parameter.dtype}: rounding is then a large "
                   "part of the estimate (ep at beta 1e-12 in float32 measured 2.5e5 relative error)")
        if abs(nudge) < REFUSED_NUDGE * epsilon and not getattr(algorithm, "allow_imprecise", False):
            raise ValueError(f"{problem}; use a larger nudge, 'auto', or float64 parameters "
                             "(allow_imprecise=True returns it anyway, with a PrecisionWarning)")
        warnings.warn(f"{problem}; use a larger nudge or float64 parameters", PrecisionWarning, stacklevel=3)


def check_estimate_error(algorithm: Algorithm, estimate: Estimate) -> None:
    """Warn when the estimate's worst layer is further from its limit than ``error_tolerance``
    (for algorithms that have one and compute ``Estimate.error_bound``)."""
    if estimate.error_bound is None:
        return
    if not all(math.isfinite(v) for v in estimate.error_bound.values()):
        bad = sorted(layer for layer, value in estimate.error_bound.items() if not math.isfinite(value))
        raise FloatingPointError(
            f"{algorithm.name}'s estimate is not finite in layer(s) {', '.join(bad)} (nudge {estimate.nudge}) although "
            "the loss is: report it with the network and batch; a fixed nudge (lam, beta) of a sensible size avoids it")
    tolerance, worst = getattr(algorithm, "error_tolerance", None), estimate.worst_error
    if tolerance is not None and worst is not None and worst[1] > tolerance:
        if getattr(algorithm, "lam", None) != "auto":
            fix = "use lam='auto' (the finite-difference step of each batch), centered=True or a tighter tol"
        else:
            fix = ("with the per-batch lam this is mostly a unit crossing the kink of a ReLU or a max-pool tie, which "
                   "moves its layer's update whatever lam is (a smooth activation avoids it); else centered=True or "
                   "a tighter tol")
        warnings.warn(
            f"{algorithm.name}'s estimate is {worst[1]:.1%} off its vanishing-nudge limit (backprop's "
            f"gradient) in layer {worst[0]}, above error_tolerance={tolerance:g} (nudge {estimate.nudge:.3g}, "
            f"inference converged: {estimate.converged}): {fix}; Estimate.error_bound has every layer",
            EstimateErrorWarning, stacklevel=3)
