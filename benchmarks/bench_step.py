#!/usr/bin/env python3
"""Time one training step of every algorithm as a ratio to backprop (issue 6, measurement part).

A *training step* is ``alg.step(net, x, y, loss="cross_entropy", record=False)`` followed by
applying the returned gradients with SGD (``p.grad = g; opt.step()``). The reference, "BP", is
textbook autograd: ``opt.zero_grad(); loss_fn(net(x), y).backward(); opt.step()``; the ``bp``
algorithm is timed the same way as every other algorithm and must be no slower.

Cases
  a  ``mlp([784, 128, 64, 10])``, batch 64, real MNIST (Millidge et al. 2022 A.1), cross-entropy
  b  ``mlp([50176, 4096, 2048, 1024, 27])``, batch 1, random float32 input (Song et al. 2020 A.9)
  c  a small CNN on MNIST (1x28x28), batch 64 (ep/chl: n/a, the cost model of their step is dense-only)
  d  VGG-5 at full width (128-256-512-512, ``pl_energy.core.networks.VGG``), batch 32, random
     3x32x32 input (CIFAR-shaped): the PC benchmarks' network (Pinchetti et al. 2024)
  e  a 20-layer residual MLP (``ResidualMLP``, width 128, tanh, muPC), batch 64, real MNIST

Protocol: ``torch.set_num_threads(1)`` (``--threads``), a warm-up of every variant, then
``--repeats`` rounds; each round times every variant once, in an order rotated from round to
round, on the same batch (rounds cycle through a pool of real batches). Reported: the median
time, and the ratio to BP = the median over rounds of t_variant / t_BP of the same round.
All variants share one network and SGD optimiser (lr ``--lr``); the initial weights are restored,
untimed, before every step, so every step sees the same network.

Beside each ratio: the multiply-accumulate (MAC) bound = MACs the algorithm must do / BP's MACs,
from the per-layer forward MACs F_l counted with forward hooks on Linear/Conv layers
(see ``bound_macs``), and the peak memory of a step (see ``peak_memory``).

    python benchmarks/bench_step.py                 # all cases, writes benchmarks/RESULTS.md
    python benchmarks/bench_step.py --case a        # only case a (updates its section)
    python benchmarks/bench_step.py --case a --profile pc_nudge   # where the time goes
    python benchmarks/bench_step.py --device cuda   # GPU numbers (synchronised timings)
    python benchmarks/bench_step.py --quick         # tiny nets, 2 repeats (smoke test)
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pl_energy import build_algorithm, mlp  # noqa: E402
from pl_energy.algorithms.predictive_coding import PAPER_SETTINGS  # noqa: E402
from pl_energy.core.networks import VGG  # noqa: E402
from pl_energy.core.residual import ResidualMLP, ScaledLinear  # noqa: E402

RESULTS = REPO / "benchmarks" / "RESULTS.md"
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")


# ------------------------------------------------------------------------------------ variants
@dataclass(frozen=True)
class Variant:
    key: str                    # row label
    algorithm: str | None       # None: textbook autograd BP
    hparams: dict = field(default_factory=dict)
    dense_only: bool = False    # ep, chl: the cost model of the Hopfield step covers dense layers only

    def build(self):
        return build_algorithm(self.algorithm, **self.hparams)


VARIANTS = (
    Variant("bp_textbook", None),
    Variant("bp", "bp"),
    Variant("z_il", "z_il"),
    Variant("fa_z_il", "fa_z_il"),
    Variant("pc", "pc", dict(PAPER_SETTINGS)),
    Variant("pc_nudge", "pc_nudge", dict(PAPER_SETTINGS)),
    Variant("pc_converged", "pc"),
    Variant("pc_nudge_converged", "pc_nudge"),
    Variant("ep", "ep", dict(solver="gd", steps=50, step_size=0.5, tol=None, beta=0.1), dense_only=True),
    Variant("chl", "chl", dict(solver="gd", steps=50, step_size=0.5, tol=None), dense_only=True),
)
VARIANT_NOTES = {
    "bp_textbook": "opt.zero_grad(); CE(net(x), y).backward(); opt.step()  (the reference)",
    "bp": "build_algorithm('bp')",
    "z_il": "defaults (gamma=1, lam=1)",
    "fa_z_il": "defaults (depth-1 steps)",
    "pc": "the papers' inference: solver='gd', steps=50, step_size=0.1 (lam=1)",
    "pc_nudge": "the papers' inference: solver='gd', steps=50, step_size=0.1 (lam=0.01)",
    "pc_converged": "defaults: solver='error', tol=1e-4 (relative residual), steps<=100 (lam=1)",
    "pc_nudge_converged": "defaults: solver='error', tol=1e-4, steps<=100 (lam=0.01)",
    "ep": "steps=50 free + 50 nudged (beta=0.1, step_size=0.5)",
    "chl": "steps=50 free + 50 clamped (gamma=0.1, step_size=0.5)",
}
TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-6, 1e-8)


# ---------------------------------------------------------------------------------- MAC model
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


def bound_macs(variant: Variant, macs: list[int], steps: float | None = None,
               depth: int | None = None) -> float:
    """MACs a step of ``variant`` must do, from the per-layer forward MACs ``macs`` = [F_1..F_L].

    S = sum F_l (a forward pass = the weight gradients = the input-VJPs of all layers),
    S2 = sum_{l>=2} F_l (the layers whose inputs move during inference).

    - BP, bp, z_il: forward S + input-VJPs of layers 2..L (S2) + weight grads S.
    - pc, pc_nudge at T steps (either solver): initial forward S + T * (forward + input-VJP of
      layers 2..L) + the input-VJPs at the final state that measure its residual (S2) + weight
      grads S; ``centered`` doubles it. ``steps`` overrides T (steps actually taken).
    - fa_z_il: S + (L-1) * 2 S2 + S (weight gradients counted once).
    - ep (dense Hopfield energy): initial forward S + (free + nudged) steps * (drives
      W_l rho(x_{l-1}) for l>=2 + feedback W_{l+1}^T rho(x_{l+1}) for l<=L-1 = 2 S2)
      + 2 * weight grads (outer products); ``centered`` adds a nudged phase.
    - chl: as ep, but the clamped phase does not drive the clamped output layer:
      clamped steps * (2 S2 - F_L).
    """
    total, moving = sum(macs), sum(macs[1:])
    depth = len(macs) if depth is None else depth
    hp = variant.hparams
    name = variant.algorithm
    if name in (None, "bp", "z_il"):
        return 2 * total + moving
    if name in ("pc", "pc_nudge"):
        t = hp.get("steps", 50) if steps is None else steps
        phases = 2 if hp.get("centered") else 1
        return phases * (2 * total + (2 * t + 1) * moving)
    if name == "fa_z_il":
        t = hp.get("steps") or depth - 1
        return 2 * total + 2 * t * moving
    if name == "ep":
        free = hp.get("steps", 100)
        nudged = hp.get("nudged_steps") or free
        phases = 2 if hp.get("centered") else 1
        return total + (free + phases * nudged) * 2 * moving + 2 * total
    if name == "chl":
        free = hp.get("steps", 100)
        return total + free * 2 * moving + free * (2 * moving - macs[-1]) + 2 * total
    raise ValueError(f"no MAC model for {name}")


# ---------------------------------------------------------------------------------- the cases
def cnn(quick: bool = False) -> nn.Sequential:
    """The small MNIST CNN of case (c): each top-level child is one layer of the energy model."""
    if quick:  # 1x12x12 inputs
        return nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU()),
            nn.Linear(8, 10),
        )
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU()),
        nn.Linear(64, 10),
    )


@dataclass
class Case:
    key: str
    title: str
    build: Callable[[], nn.Module]
    batch: int
    input_shape: tuple[int, ...]
    classes: int
    data: str                 # "mnist" or "random"
    repeats: int
    warmup: int
    dense: bool = True


def cases(quick: bool) -> dict[str, Case]:
    if quick:
        return {
            "a": Case("a", "quick: mlp([32, 16, 8, 10]), batch 4, random", lambda: mlp([32, 16, 8, 10]),
                      4, (32,), 10, "random", 2, 1),
            "b": Case("b", "quick: mlp([64, 32, 16, 8, 5]), batch 1, random",
                      lambda: mlp([64, 32, 16, 8, 5]), 1, (64,), 5, "random", 2, 1),
            "c": Case("c", "quick: CNN on 1x12x12, batch 4, random", lambda: cnn(quick=True),
                      4, (1, 12, 12), 10, "random", 2, 1, dense=False),
            "d": Case("d", "quick: VGG-5 at width 1/32 on 3x16x16, batch 2, random",
                      lambda: VGG(5, in_shape=(3, 16, 16), width=1 / 32), 2, (3, 16, 16), 10, "random", 2, 1,
                      dense=False),
            "e": Case("e", "quick: ResidualMLP(32, 8, depth 6), batch 4, random",
                      lambda: ResidualMLP(32, 8, 6, 10, "tanh", "mupc"), 4, (32,), 10, "random", 2, 1, dense=False),
        }
    return {
        "a": Case("a", "mlp([784, 128, 64, 10]), batch 64, real MNIST, CE (Millidge et al. 2022 A.1)",
                  lambda: mlp([784, 128, 64, 10]), 64, (784,), 10, "mnist", 51, 5),
        "b": Case("b", "mlp([50176, 4096, 2048, 1024, 27]), batch 1, random float32 input, CE "
                       "(Song et al. 2020 A.9)", lambda: mlp([50176, 4096, 2048, 1024, 27]), 1, (50176,), 27,
                  "random", 21, 2),
        "c": Case("c", "CNN conv(1,8,5)-pool-conv(8,16,5)-pool-fc(256,64)-fc(64,10), batch 64, "
                       "real MNIST 1x28x28, CE", cnn, 64, (1, 28, 28), 10, "mnist", 31, 3,
                  dense=False),
        "d": Case("d", "VGG-5 (128-256-512-512, 3x3 convs, max-pool, ReLU), batch 32, random 3x32x32, CE",
                  lambda: VGG(5), 32, (3, 32, 32), 10, "random", 5, 1, dense=False),
        "e": Case("e", "ResidualMLP(784, width 128, depth 20, tanh, muPC), batch 64, real MNIST, CE",
                  lambda: ResidualMLP(784, 128, 20, 10, "tanh", "mupc"), 64, (784,), 10, "mnist", 21, 3,
                  dense=False),
    }


def data_root() -> Path | None:
    """``$PL_ENERGY_DATA``, else ``<repo>/../shared/data``, if it holds MNIST/raw/ training files."""
    candidates = [Path(os.environ["PL_ENERGY_DATA"])] if os.environ.get("PL_ENERGY_DATA") else []
    candidates.append(REPO.parent / "shared" / "data")
    for root in candidates:
        if all((root / "MNIST" / "raw" / name).is_file() for name in MNIST_FILES):
            return root
    return None


def mnist_batches(case: Case, count: int, root: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches from the start of the seeded (seed 0) 50k train split, pixels / 255.

    The raw .gz files are read in place by the data module's reader: the same split as
    ``pl_energy.data.MNISTDataModule(seed=0)``.
    """
    from pl_energy.data.mnist import read_idx

    raw = root / "MNIST" / "raw"
    images = read_idx(raw, MNIST_FILES[0].removesuffix(".gz"))
    labels = read_idx(raw, MNIST_FILES[1].removesuffix(".gz")).long()
    order = torch.randperm(60_000, generator=torch.Generator().manual_seed(0))[:50_000]
    chosen = order[: count * case.batch]
    x = images[chosen].to(torch.float32).div_(255.0).reshape(len(chosen), *case.input_shape)
    y = labels[chosen]
    return [(x[i * case.batch:(i + 1) * case.batch], y[i * case.batch:(i + 1) * case.batch])
            for i in range(count)]


def random_batches(case: Case, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(case.batch, *case.input_shape, generator=gen),
             torch.randint(0, case.classes, (case.batch,), generator=gen)) for _ in range(count)]


# ------------------------------------------------------------------------------ measurements
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stepper:
    """One training step of a variant on a shared network and SGD optimiser."""

    def __init__(self, variant: Variant, network: nn.Module, optimizer: torch.optim.Optimizer,
                 initial: list[torch.Tensor] | None = None):
        self.variant = variant
        self.initial = initial
        self.network = network
        self.optimizer = optimizer
        self.named = list(network.named_parameters())
        self.algorithm = variant.build() if variant.algorithm else None
        self.steps_taken: list[int] = []

    def restore(self) -> None:
        """Untimed: put the initial weights back, so that every step sees the same network."""
        if self.initial is not None:
            with torch.no_grad():
                for (_, parameter), value in zip(self.named, self.initial):
                    parameter.copy_(value)

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        if self.algorithm is None:
            self.optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(self.network(x), y).backward()
            self.optimizer.step()
            return None
        estimate = self.algorithm.step(self.network, x, y, loss="cross_entropy", record=False)
        gradients = estimate.gradients
        for name, parameter in self.named:
            parameter.grad = gradients[name]
        self.optimizer.step()
        return estimate

    def release(self, estimate) -> None:
        """Untimed: drop the gradients so that memory does not pile up between variants."""
        self.optimizer.zero_grad(set_to_none=True)
        if estimate is not None and estimate.inference:
            self.steps_taken.append(sum(report.steps for report in estimate.inference))

    def timed(self, x, y, device) -> float:
        self.restore()
        sync(device)
        start = time.perf_counter()
        estimate = self(x, y)
        sync(device)
        elapsed = time.perf_counter() - start
        self.release(estimate)
        return elapsed


def peak_memory(stepper: Stepper, x, y, device: torch.device) -> float | None:
    """Peak bytes of tensor memory allocated during one step, above what was live before it.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: every
    allocation and free of torch's CPU allocator during the step, recorded by
    ``torch.profiler`` (``profile_memory=True``), summed in time order; the peak of that running
    sum. Both count tensor storage only (weights, gradients, activations, temporaries), not the
    Python heap or allocator caching.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        stepper.release(stepper(x, y))
        sync(device)
        peak = float(torch.cuda.max_memory_allocated(device) - base)
        stepper.restore()
        return peak
    from torch.profiler import ProfilerActivity, profile
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            estimate = stepper(x, y)
            del estimate  # what the step leaves behind is freed here, inside the recording
            stepper.optimizer.zero_grad(set_to_none=True)
        records = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                   if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    except Exception:  # private profiler API changed: report n/a rather than a wrong number
        return None
    finally:
        stepper.restore()
    live = peak = 0
    for _, nbytes in sorted(records):
        live += nbytes
        peak = max(peak, live)
    return float(peak)


def flat_agreement(estimate: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]):
    """(cosine, relative error) of all gradients taken together, without concatenating them."""
    dot = norm_e = norm_r = diff = 0.0
    for name, ref in reference.items():
        est = estimate[name].double()
        ref = ref.double()
        dot += float((est * ref).sum())
        norm_e += float(est.pow(2).sum())
        norm_r += float(ref.pow(2).sum())
        diff += float((est - ref).pow(2).sum())
    cosine = dot / math.sqrt(norm_e * norm_r) if norm_e > 0 and norm_r > 0 else float("nan")
    return cosine, math.sqrt(diff / norm_r) if norm_r > 0 else float("nan")


def reference_gradients(network, x, y) -> dict[str, torch.Tensor]:
    named = list(network.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(network(x), y), [p for _, p in named])
    return {name: g for (name, _), g in zip(named, grads)}


def agreement(case: Case, variants, network, x, y) -> list[dict]:
    """Cosine and relative error vs BP at the initial weights, and the effect of ``tol``."""
    reference = reference_gradients(network, x, y)
    rows = []
    for variant in variants:
        if variant.algorithm is None:
            continue
        estimate = variant.build().step(network, x, y, loss="cross_entropy", record=False)
        cosine, error = flat_agreement(estimate.gradients, reference)
        steps = sum(report.steps for report in estimate.inference) if estimate.inference else None
        rows.append(dict(key=variant.key, steps=steps, cosine=cosine, rel_error=error))
        del estimate
    for tol in TOLERANCES:
        variant = Variant(f"pc_nudge error tol={tol:g}", "pc_nudge", dict(tol=tol))
        estimate = variant.build().step(network, x, y, loss="cross_entropy", record=False)
        cosine, error = flat_agreement(estimate.gradients, reference)
        rows.append(dict(key=variant.key, steps=estimate.inference[0].steps, cosine=cosine,
                         rel_error=error, converged=estimate.converged))
        del estimate
    return rows


def run_case(case: Case, args, device: torch.device) -> dict:
    """Measure every variant of ``case``; returns the rows and metadata of its section."""
    repeats = args.repeats or case.repeats
    warmup = case.warmup if args.warmup is None else args.warmup
    if case.data == "mnist":
        root = None if args.quick else data_root()
        if root is None and not args.quick:
            return dict(case=case, skipped="MNIST raw files not found: set PL_ENERGY_DATA to a "
                                           "folder holding MNIST/raw/train-*-idx*-ubyte.gz")
        pool = random_batches(case, 8) if args.quick else mnist_batches(case, 16, root)
    else:
        pool = random_batches(case, 1 if case.batch == 1 and not args.quick else 4)
    pool = [(x.to(device), y.to(device)) for x, y in pool]

    torch.manual_seed(0)
    network = case.build().to(device)
    optimizer = torch.optim.SGD(network.parameters(), lr=args.lr)
    chosen = [v for v in VARIANTS if args.variants is None or v.key in args.variants
              or v.key == "bp_textbook"]
    active = [v for v in chosen if case.dense or not v.dense_only]
    macs = layer_macs(network, pool[0][0])

    rows_agreement = [] if args.no_agreement else agreement(case, active, network, *pool[0])

    initial = [p.detach().clone() for p in network.parameters()]
    steppers = {v.key: Stepper(v, network, optimizer, initial) for v in active}
    for stepper in steppers.values():  # warm-up, every variant
        for i in range(warmup):
            stepper.restore()
            stepper.release(stepper(*pool[i % len(pool)]))
        stepper.restore()
        stepper.steps_taken.clear()
    times = {key: [] for key in steppers}
    keys = list(steppers)
    load_before = _load()
    start = time.perf_counter()
    for r in range(repeats):
        x, y = pool[r % len(pool)]
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            times[key].append(steppers[key].timed(x, y, device))
        if args.verbose:
            print(f"  [{case.key}] round {r + 1}/{repeats} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    seconds, load_after = time.perf_counter() - start, _load()
    memory = {key: (None if args.no_memory else peak_memory(stepper, *pool[0], device))
              for key, stepper in steppers.items()}

    bp_times = times["bp_textbook"]
    bp_macs = bound_macs(VARIANTS[0], macs)
    rows = []
    for variant in chosen:
        if variant.key not in steppers:
            rows.append(dict(key=variant.key, na="n/a: the cost model of the Hopfield step covers dense layers only"))
            continue
        ts = times[variant.key]
        steps = steppers[variant.key].steps_taken
        steps_median = statistics.median(steps) if steps else None
        ratio = statistics.median(t / b for t, b in zip(ts, bp_times))
        bound = bound_macs(variant, macs, steps=steps_median) / bp_macs
        rows.append(dict(
            key=variant.key, ms=1e3 * statistics.median(ts), q1=1e3 * _quantile(ts, 0.25),
            q3=1e3 * _quantile(ts, 0.75), ratio=ratio, bound=bound, n=len(ts),
            steps=steps_median, steps_range=(min(steps), max(steps)) if steps else None,
            memory=memory[variant.key], configured_steps=configured_steps(variant, len(macs)),
        ))
    base_memory = memory.get("bp_textbook")
    for row in rows:
        if row.get("memory") is not None and base_memory:
            row["memory_ratio"] = row["memory"] / base_memory
        row["target"], row["status"] = target_of(case.key, row, args.quick)
    return dict(case=case, rows=rows, agreement=rows_agreement, macs=macs, repeats=repeats,
                warmup=warmup, seconds=seconds, load=(load_before, load_after))


def configured_steps(variant: Variant, depth: int) -> str | None:
    hp = variant.hparams
    if variant.algorithm in ("pc", "pc_nudge"):
        return str(hp.get("steps", 50)) if hp.get("tol", 1e-4) is None else None
    if variant.algorithm == "fa_z_il":
        return str(hp.get("steps") or depth - 1)
    if variant.algorithm in ("ep", "chl"):
        return f"{hp.get('steps', 100)}+{hp.get('nudged_steps') or hp.get('steps', 100)}"
    return None


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _quantile(values, q):
    return float(np.quantile(np.asarray(values), q))


# -------------------------------------------------------------------------------- the targets
def target_of(case: str, row: dict, quick: bool) -> tuple[str, str]:
    """The issue's target for this row and PASS / FAIL (or '' when it has none)."""
    key = row["key"]
    if "ratio" not in row:
        return "", ""
    ratio, bound = row["ratio"], row["bound"]
    if key == "bp":
        return "<= 1.00x BP (no slower than textbook)", _status(ratio <= 1.0, ratio <= 1.05)
    if key in ("z_il", "fa_z_il"):
        limit = 1.1 if case == "d" else 1.2
        return f"<= {limit:g}x BP", _status(ratio <= limit)
    if key == "pc_nudge_converged" and case == "d":
        return "<= 3x BP (and within 1e-3 of its equilibrium)", _status(ratio <= 3)
    if key in ("pc", "pc_nudge"):
        if case == "a":
            ok_ms = row["ms"] < 5.8
            return "<= 5x BP and < 5.8 ms (PCX: 5.8 ms, 5.3x)", _status(ratio <= 5 and ok_ms)
        factor = 1.2 if case == "b" else 2.0
        return f"<= {factor:g}x MAC bound (<= {factor * bound:.2f}x BP)", _status(ratio <= factor * bound)
    if key in ("ep", "chl"):
        return f"<= 2x MAC bound (<= {2 * bound:.2f}x BP)", _status(ratio <= 2 * bound)
    return "", ""


def _status(ok: bool, close: bool = False) -> str:
    return "PASS" if ok else ("~ (within 5%)" if close else "FAIL")


# ----------------------------------------------------------------------------------- reporting
def machine(device: torch.device) -> str:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"Model name:\s*(.+)", out)
        model = found.group(1).strip() if found else model
    except (OSError, subprocess.SubprocessError):
        pass
    text = (f"CPU {model} ({os.cpu_count()} logical cores visible), torch {torch.__version__}, "
            f"torch threads {torch.get_num_threads()}, Python {platform.python_version()}")
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def code_version() -> str:
    """The commit the core was imported from, and whether pl_energy/ had uncommitted edits."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "pl_energy"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}" + (" + uncommitted edits in pl_energy/" if dirty else "")


CODE_VERSION = code_version()  # taken at import, when the core is imported


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def _mb(value):
    if value is None:
        return "n/a"
    return f"{value / 2**20:.1f} MiB" if value >= 2**20 else f"{value / 2**10:.1f} KiB"


def table(result: dict) -> str:
    lines = ["| variant | median ms (IQR) | ratio to BP | MAC bound | ratio / bound | "
             "peak memory (x BP) | inference steps | target | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        if "na" in row:
            lines.append(f"| {row['key']} | {row['na']} | | | | | | | |")
            continue
        steps = row["steps"]
        if row["steps_range"] and row["steps_range"][0] != row["steps_range"][1]:
            steps = f"{steps:g} ({row['steps_range'][0]}-{row['steps_range'][1]})"
        elif steps is not None:
            steps = f"{steps:g}"
        else:
            steps = row.get("configured_steps")
        memory = _mb(row["memory"])
        if row.get("memory_ratio") is not None:
            memory += f" ({row['memory_ratio']:.2f}x)"
        lines.append(
            f"| {row['key']} | {row['ms']:.3f} ({row['q1']:.3f}-{row['q3']:.3f}) | "
            f"{row['ratio']:.2f}x | {row['bound']:.2f}x | {row['ratio'] / row['bound']:.2f} | "
            f"{memory} | {steps or '-'} | {row['target']} | {row['status']} |")
    return "\n".join(lines)


def agreement_table(result: dict) -> str:
    if not result["agreement"]:
        return "(agreement not measured: --no-agreement)"
    lines = ["| variant | inference steps taken | cosine vs BP | relative error vs BP |",
             "|---|---|---|---|"]
    for row in result["agreement"]:
        steps = "-" if row["steps"] is None else str(row["steps"])
        if row.get("converged") is False:
            steps += " (hit the cap)"
        lines.append(f"| {row['key']} | {steps} | {row['cosine']:.6f} | {row['rel_error']:.3e} |")
    return "\n".join(lines)


def section(result: dict, command: str, device: torch.device) -> str:
    case = result["case"]
    head = f"## Case ({case.key}): {case.title}\n\n"
    if "skipped" in result:
        return head + f"Skipped: {result['skipped']}\n"
    macs = ", ".join(f"{m:,}" for m in result["macs"])
    return (
        head
        + f"- command: `{command}`\n"
        + f"- machine: {machine(device)}, device `{device}`\n"
        + f"- code: git {CODE_VERSION}\n"
        + f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; "
          f"{result['repeats']} timed rounds after {result['warmup']} warm-up step(s) per variant; "
          f"{result['seconds']:.0f} s of timing; 1-min load average {_fmt(result['load'][0], '.1f')} "
          f"before, {_fmt(result['load'][1], '.1f')} after (other jobs share the {os.cpu_count()} cores)\n"
        + f"- forward MACs per layer F_l (whole batch): {macs}; BP = {bound_macs(VARIANTS[0], result['macs']):,.0f} MACs\n\n"
        + table(result)
        + "\n\nGradient agreement with BP at the initial weights (first batch):\n\n"
        + agreement_table(result) + "\n"
    )


HEADER = """# Step-time benchmark: every algorithm against backprop

Produced by `benchmarks/bench_step.py` (re-run one case with `python benchmarks/bench_step.py --case a`;
it rewrites only that case's section). Each case section records the command, machine and date.

How to read the tables:

- **median ms (IQR)**: wall time of one training step (`alg.step(..., record=False)` + SGD update
  with `p.grad = g; opt.step()`), median and quartiles over the timed rounds.
- **ratio to BP**: median over rounds of t_variant / t_BP in the same round, where BP is textbook
  autograd (`opt.zero_grad(); CE(net(x), y).backward(); opt.step()`, row `bp_textbook`). Variants
  are timed in a rotated order each round, one thread (`torch.set_num_threads(1)`).
- **MAC bound**: multiply-accumulates the algorithm must do divided by BP's, from the per-layer
  forward MACs F_l (S = sum F_l, S2 = sum over layers 2..L). BP = S + S2 + S; PC at T steps
  = 2S + (2 T + 1) S2 (the final residual included); Fa-Z-IL = 2S + 2 (L-1) S2; EP = S + (free + nudged) 2 S2 + 2S; CHL the same but
  the clamped output is not driven (clamped steps x (2 S2 - F_L)). For the `*_converged` rows
  (the default solver, stopped by its tolerance) T is the median number of steps actually taken. **ratio / bound** near 1 means the step runs at BP's
  MAC throughput; above 1 means overhead beyond the arithmetic.
- **peak memory**: peak bytes of tensor storage allocated during one step above what was live before it
  (CPU: every alloc/free of torch's CPU allocator recorded by `torch.profiler` with
  `profile_memory=True`, summed in time order; CUDA: `torch.cuda.max_memory_allocated`). It
  includes the gradients the step returns. Inference should stay O(activations), not
  O(T x activations): compare `pc` (T = 50) with `bp`.
- **target**: the goals from issue 6. On (a) PCX measures 5.8 ms for PC vs 1.1 ms for BP
  (5.3x) on this machine with one thread.
- All variants share one network and one SGD optimiser (lr 1e-3); the update is applied and timed,
  then the initial weights are restored (untimed) before the next step, so every step of every
  variant sees the same network (a diverging estimate cannot poison the others, and the number
  of steps a tolerance-stopped inference takes stays comparable).
"""


def write_results(path: Path, sections: dict[str, str]) -> None:
    """Replace (or add) the sections of the cases just run; keep the others and the notes."""
    text = path.read_text() if path.exists() else ""
    if not text.startswith("# Step-time benchmark"):
        text = HEADER
    pattern = r"<!-- case (\w) start -->\n(.*?)<!-- case \1 end -->\n"
    blocks = dict(re.findall(pattern, text, re.S))
    blocks.update(sections)
    head = re.split(r"<!-- case \w start -->|<!-- notes start -->", text, maxsplit=1)[0]
    notes = text[text.index("<!-- notes start -->"):] if "<!-- notes start -->" in text else ""
    body = "\n".join(f"<!-- case {key} start -->\n{blocks[key]}<!-- case {key} end -->\n"
                     for key in sorted(blocks))
    path.write_text(head.rstrip("\n") + "\n\n" + body + ("\n" + notes if notes else ""))


# ------------------------------------------------------------------------------------ profiling
def profile_variant(case: Case, key: str, device: torch.device, steps: int = 5) -> str:
    """Where a step's time goes: torch.profiler ops (self time) and cProfile Python functions."""
    import cProfile
    import io
    import pstats
    from torch.profiler import ProfilerActivity, profile

    variant = next(v for v in VARIANTS if v.key == key)
    root = data_root()
    pool = (mnist_batches(case, 1, root) if case.data == "mnist" and root else random_batches(case, 1))
    x, y = (t.to(device) for t in pool[0])
    torch.manual_seed(0)
    network = case.build().to(device)
    initial = [p.detach().clone() for p in network.parameters()]
    stepper = Stepper(variant, network, torch.optim.SGD(network.parameters(), lr=1e-3), initial)
    for _ in range(2):
        stepper.restore()
        stepper.release(stepper(x, y))
    wall = statistics.median(stepper.timed(x, y, device) for _ in range(steps))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            stepper.restore()
            stepper.release(stepper(x, y))
        sync(device)
    averages = prof.key_averages()
    aten_self = sum(e.self_cpu_time_total for e in averages) / steps / 1e3
    out = [f"{case.key}/{key}: median step {wall * 1e3:.3f} ms without the profiler; "
           f"profiled ops' self CPU time {aten_self:.3f} ms per step (profiler-inflated)\n",
           averages.table(sort_by="self_cpu_time_total", row_limit=25)]
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        stepper.restore()
        stepper.release(stepper(x, y))
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(25)
    out.append(f"cProfile over {steps} steps (tottime = time in the function itself):\n"
               + stream.getvalue())
    return "\n".join(out)


# ----------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", nargs="+", choices=("a", "b", "c", "d", "e"), default=["a", "b", "c", "d", "e"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timings are synchronised)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds (default: a 51, b 21, c 31, d 5, e 21; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant")
    parser.add_argument("--variants", nargs="+", default=None,
                        choices=[v.key for v in VARIANTS], help="subset (bp_textbook always runs)")
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate")
    parser.add_argument("--quick", action="store_true", help="tiny networks, 2 repeats (smoke test)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--no-agreement", action="store_true", help="skip the cosine-vs-BP pass")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="markdown file to update (default benchmarks/RESULTS.md)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--profile", metavar="VARIANT", choices=[v.key for v in VARIANTS],
                        help="profile VARIANT on each --case instead of benchmarking")
    parser.add_argument("--verbose", action="store_true", help="progress on stderr")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    torch.set_num_threads(args.threads)
    all_cases = cases(args.quick)
    if args.profile:
        for key in args.case:
            print(profile_variant(all_cases[key], args.profile, device))
        return {}
    command = "python benchmarks/bench_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results, sections = {}, {}
    for key in args.case:
        case = all_cases[key]
        print(f"case ({key}): {case.title}", flush=True)
        result = run_case(case, args, device)
        results[key] = result
        sections[key] = section(result, command.strip(), device)
        print(sections[key], flush=True)
    if not args.no_write:
        write_results(args.output, sections)
        print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
