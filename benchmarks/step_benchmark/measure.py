"""Timing, memory and agreement of every variant on a case, interleaved with backprop."""

from __future__ import annotations

import copy
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cases import Case, data_root, mnist_batches, random_batches
from .cost import bound_macs, configured_steps, layer_macs
from .report import target_of
from .variants import TOLERANCES, VARIANTS, Variant

from pl_energy.core.networks import compile_layers
from pl_energy.metrics import gradient_agreement


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stepper:
    """One training step of a variant on a shared network and SGD optimiser; ``compiled``:
    ``torch.compile``'s options for its inference steps too, as ``EnergyModule(compile=...)``
    sets them (``core.compiled_steps``: PC inference on closed-form layers)."""

    def __init__(self, variant: Variant, network: nn.Module, optimizer: torch.optim.Optimizer,
                 initial: list[torch.Tensor] | None = None, compiled: dict | None = None):
        self.variant = variant
        self.initial = initial
        self.network = network
        self.optimizer = optimizer
        self.named = list(network.named_parameters())
        self.algorithm = variant.build() if variant.algorithm else None
        if compiled is not None and self.algorithm is not None:
            self.algorithm.compile_inference = compiled
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
        estimate = self.algorithm.estimate(self.network, x, y, loss="cross_entropy", record=False)
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


def reference_gradients(network, x, y) -> dict[str, torch.Tensor]:
    named = list(network.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(network(x), y), [p for _, p in named])
    return {name: g for (name, _), g in zip(named, grads)}


def agreement(case: Case, variants, network, hopfield_network, x, y,
              reference_network: nn.Module | None = None) -> list[dict]:
    """Cosine and relative error vs BP at the initial weights (ep and chl on
    ``hopfield_network``, the rest on ``network``), and the effect of ``tol``. BP's gradient is
    taken on ``reference_network`` (an eager copy of a compiled ``network``) when given."""
    reference = reference_gradients(reference_network if reference_network is not None else network, x, y)
    hopfield_reference = (reference if hopfield_network is network else
                          reference_gradients(hopfield_network, x, y))
    rows = []
    for variant in variants:
        if variant.algorithm is None:
            continue
        own, exact = (hopfield_network, hopfield_reference) if variant.hopfield else (network, reference)
        estimate = variant.build().estimate(own, x, y, loss="cross_entropy", record=False)
        cosine, error = _cosine_and_error(estimate.gradients, exact)
        steps = sum(report.steps for report in estimate.inference) if estimate.inference else None
        rows.append(dict(key=variant.key, steps=steps, cosine=cosine, rel_error=error))
        del estimate
    for tol in TOLERANCES:
        variant = Variant(f"pc_nudge error tol={tol:g}", "pc_nudge", dict(tol=tol))
        estimate = variant.build().estimate(network, x, y, loss="cross_entropy", record=False)
        cosine, error = _cosine_and_error(estimate.gradients, reference)
        rows.append(dict(key=variant.key, steps=estimate.inference[0].steps, cosine=cosine,
                         rel_error=error, converged=estimate.converged, settled=estimate.inference[0].settled))
        del estimate
    return rows


def run_case(case: Case, args, device: torch.device) -> dict:
    """Measure every variant of ``case``; returns the rows and metadata of its section."""
    repeats = args.repeats or case.repeats
    warmup = case.warmup if args.warmup is None else args.warmup
    if case.data == "mnist":
        root = None if args.quick else data_root()
        if root is None and not args.quick:
            return dict(case=case, compiled=compile_options(args),
                        skipped="MNIST raw files not found: set PL_ENERGY_DATA to a "
                                "folder holding MNIST/raw/train-*-idx*-ubyte.gz")
        pool = random_batches(case, 8) if args.quick else mnist_batches(case, 16, root)
    else:
        pool = random_batches(case, 1 if case.batch == 1 and not args.quick else 4)
    pool = [(x.to(device), y.to(device)) for x, y in pool]

    network, optimizer, initial = _seeded(case.build, device, args.lr)
    # ep and chl on the same layers with bounded units (the same MACs), from the same seed
    hopfield = (network, optimizer, initial) if case.builder(hopfield=True) is case.build else _seeded(
        case.builder(hopfield=True), device, args.lr)
    chosen = [v for v in VARIANTS if args.variants is None or v.key in args.variants
              or v.key == "bp_textbook"]
    active = [v for v in chosen if not (v.hopfield and case.no_hopfield)]
    macs = layer_macs(network, pool[0][0])
    if layer_macs(hopfield[0], pool[0][0]) != macs:
        raise ValueError(f"case {case.key}: its Hopfield network does not have the same layers")
    # compiled after the MAC count (its forward hooks on compiled layers would recompile them); ep and chl's
    # clip-unit copy is left eager (their steps do not call the layers); the agreement's
    # reference is taken on an eager copy, so that it would show a compiler's error
    compiled = compile_options(args)
    eager = network
    if compiled is not None:
        eager = copy.deepcopy(network)  # a copy is not compiled
        compile_for_timing(network, compiled)

    def setup(variant: Variant):
        return hopfield if variant.hopfield else (network, optimizer, initial)

    rows_agreement = [] if args.no_agreement else agreement(case, active, network, hopfield[0], *pool[0],
                                                            reference_network=eager)
    del eager

    steppers = {v.key: Stepper(v, *setup(v), compiled=compiled) for v in active}
    for stepper in steppers.values():  # warm-up, every variant
        for i in range(warmup):
            stepper.restore()
            stepper.release(stepper(*pool[i % len(pool)]))
        stepper.restore()
        stepper.steps_taken.clear()
    times = {key: [] for key in steppers}
    keys = list(steppers)
    load_before = load_average()
    start = time.perf_counter()
    for r in range(repeats):
        x, y = pool[r % len(pool)]
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            times[key].append(steppers[key].timed(x, y, device))
        if args.verbose:
            print(f"  [{case.key}] round {r + 1}/{repeats} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    seconds, load_after = time.perf_counter() - start, load_average()
    memory = {key: (None if args.no_memory else peak_memory(stepper, *pool[0], device))
              for key, stepper in steppers.items()}

    bp_times = times["bp_textbook"]
    bp_macs = bound_macs(VARIANTS[0], macs)
    rows = []
    for variant in chosen:
        if variant.key not in steppers:
            rows.append(dict(key=variant.key, na=case.no_hopfield))
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
                warmup=warmup, seconds=seconds, load=(load_before, load_after), compiled=compiled)


def compile_for_timing(network: nn.Module, options: dict) -> None:
    """``compile_layers`` for a timing: a layer that would fall back to eager (torch's recompile
    limit) fails the run instead, so that a compiled row is compiled."""
    compile_layers(network, **options)
    torch._dynamo.config.fail_on_recompile_limit_hit = True


def compile_options(args) -> dict | None:
    """``torch.compile``'s options for ``--compile`` (None: eager)."""
    if not getattr(args, "compile", None):
        return None
    options = {"backend": args.compile}
    if getattr(args, "compile_mode", None):
        options["mode"] = args.compile_mode
    return options


def _seeded(build, device: torch.device, lr: float):
    """A network built from seed 0, its SGD optimiser and its initial weights."""
    torch.manual_seed(0)
    network = build().to(device)
    return network, torch.optim.SGD(network.parameters(), lr=lr), [p.detach().clone() for p in network.parameters()]


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _quantile(values, q):
    return float(np.quantile(np.asarray(values), q))


def _cosine_and_error(estimate: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(cosine, relative error) of all gradients taken together (``pl_energy.metrics``)."""
    metrics = gradient_agreement(estimate, reference)
    return metrics["cosine"], metrics["rel_error"]
