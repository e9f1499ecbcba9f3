"""The multiply-accumulate (MAC) bound of a step, from per-layer forward MACs and the built algorithm."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from pl_energy.core.residual import ScaledLinear

from .variants import Variant


def layer_macs(network: nn.Module, example: torch.Tensor) -> list[int]:
    """Forward MACs F_l of each top-level layer for the batch ``example`` (forward hooks).

    Linear: out_elems * in_features (= batch * in * out); Conv: out_elems * in_ch/groups * prod(k).
    Activations, pooling and the loss count zero.
    """
    layers = list(network.children())
    owner = {}
    for index, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(module, (nn.Linear, ScaledLinear, nn.modules.conv._ConvNd)):
                owner[module] = index
    counts = [0] * len(layers)

    def hook(module, inputs, output):
        if isinstance(module, (nn.Linear, ScaledLinear)):
            counts[owner[module]] += output.numel() * module.in_features
        else:
            counts[owner[module]] += (output.numel() * (module.in_channels // module.groups)
                                      * math.prod(module.kernel_size))

    handles = [module.register_forward_hook(hook) for module in owner]
    try:
        with torch.no_grad():
            network(example)
    finally:
        for handle in handles:
            handle.remove()
    return counts


def settings(variant: Variant) -> dict:
    """The hyper-parameters the variant's algorithm actually runs with: its dataclass fields
    after construction (the variant's settings over the algorithm's defaults), not literals
    re-typed here."""
    return {} if variant.algorithm is None else dataclasses.asdict(variant.build())


def bound_macs(variant: Variant, macs: list[int], steps: float | None = None,
               depth: int | None = None) -> float:
    """MACs a step of ``variant`` must do, from the per-layer forward MACs ``macs`` = [F_1..F_L].

    S = sum F_l (a forward pass = the weight gradients = the input-VJPs of all layers),
    S2 = sum_{l>=2} F_l (the layers whose inputs move during inference). The step counts and
    phases are read off the built algorithm (``settings``).

    - BP, bp, z_il, and fa_z_il without ``full_dynamics`` (z_il's arithmetic): forward S +
      input-VJPs of layers 2..L (S2) + weight grads S.
    - pc, pc_nudge at T steps (either solver): initial forward S + T * (forward + input-VJP of
      layers 2..L) + the input-VJPs at the final state that measure its residual (S2) + weight
      grads S; ``centered`` doubles it. ``steps`` overrides T (steps actually taken).
    - fa_z_il with ``full_dynamics``: S + T * 2 S2 + S, T = ``steps`` or L-1 (weight gradients
      counted once).
    - ep (Hopfield energy, dense or convolutional): initial forward S + (free + nudged) steps *
      (drives W_l rho(x_{l-1}) for l>=2 + feedback W_{l+1}^T rho(x_{l+1}) for l<=L-1 = 2 S2:
      a coupling's transpose, the VJP of a convolution, costs its forward's F_l MACs)
      + 2 * weight grads (outer products); ``centered`` adds a nudged phase.
    - chl: as ep, but the clamped phase does not drive the clamped output layer:
      clamped steps * (2 S2 - F_L).
    """
    total, moving = sum(macs), sum(macs[1:])
    depth = len(macs) if depth is None else depth
    hp = settings(variant)
    name = variant.algorithm
    if name in (None, "bp", "z_il") or (name == "fa_z_il" and not hp["full_dynamics"]):
        return 2 * total + moving
    if name in ("pc", "pc_nudge"):
        t = hp["steps"] if steps is None else steps
        phases = 2 if hp["centered"] else 1
        return phases * (2 * total + (2 * t + 1) * moving)
    if name == "fa_z_il":
        t = hp["steps"] or depth - 1
        return 2 * total + 2 * t * moving
    if name == "ep":
        free = hp["steps"]
        nudged = hp["nudged_steps"] or free
        phases = 2 if hp["centered"] else 1
        return total + (free + phases * nudged) * 2 * moving + 2 * total
    if name == "chl":
        free = hp["steps"]
        return total + free * 2 * moving + free * (2 * moving - macs[-1]) + 2 * total
    raise ValueError(f"no MAC model for {name}")


def configured_steps(variant: Variant, depth: int) -> str | None:
    """The step count a fixed-step variant is configured with (None when a tolerance stops it)."""
    hp = settings(variant)
    if variant.algorithm in ("pc", "pc_nudge"):
        return str(hp["steps"]) if hp["tol"] is None else None
    if variant.algorithm == "fa_z_il":
        return str(hp["steps"] or depth - 1) if hp["full_dynamics"] else None
    if variant.algorithm in ("ep", "chl"):
        return f"{hp['steps']}+{hp.get('nudged_steps') or hp['steps']}"
    return None
