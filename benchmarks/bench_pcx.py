#!/usr/bin/env python3
"""pl_energy and PCX side by side: fixed-step PC-Nudge on the same MLP and batch, each against its own BP.

The case (issue 25): Millidge et al. 2022's MLP 784-128-64-10 (ReLU hidden, linear output), one real
MNIST batch of 64 (case (a) of ``bench_step.py``: the seeded train split, pixels / 255), float32,
one thread, weights from ``torch.manual_seed(0)`` copied into PCX. PCX (Pinchetti et al. 2024,
github.com/liukidar/pcx) lives in its own environment (JAX); its side runs in a worker process
(``pcx_side.py``, started with ``--pcx-python``), and the two alternate round by round so both see
the same machine load.

What is timed, per library (one call = one training step's gradient estimate, nothing applied):

pl_energy (this process, torch):
  ``bp_autograd``   ``torch.autograd.grad(F.cross_entropy(net(x), y), params)``: plain autograd
  ``bp_library``    ``build_algorithm("bp").estimate(net, x, y, record=False)``
  ``pc_nudge_T``    ``build_algorithm("pc_nudge", solver="gd", steps=T, step_size=0.1, tol=None,
                    lam=0.01).estimate(net, x, y, record=False)``: the papers' fixed-step PC-Nudge
                    (``bench_step``'s ``pc_nudge`` row at T = 50), with its default error estimate
                    (one parameter VJP per layer for ``Estimate.error_bound``)
  ``pc_nudge_T_bare`` the same with ``error_estimate=False``: the work PCX does, nothing more
  ``pc_nudge_T_compiled`` (``--compiled``) ``pc_nudge_T`` with ``compile_inference={}``: the
                    whole estimate (free pass, T steps, update, error bound) one inductor graph
                    for T <= 50 (``algorithms.graph_estimate``), PCX's jit's counterpart
PCX (the worker, JAX jit; see ``pcx_side.py`` for the code):
  ``bp_jax``        ``jax.jit(jax.grad(loss))`` of the same function on a tuple of arrays
  ``bp_pcx``        PCX's own BP: ``pxf.value_and_grad`` over ``pxnn.LayerParam`` in ``pxf.jit``
  ``pc_nudge_T``    PCX's tutorial ``train_on_batch`` without the weight update: vodes with
                    ``se_energy`` after each hidden ReLU, an output vode frozen to the one-hot
                    target with energy ``lam * ce_energy``, ``STATUS.INIT`` (feedforward) start,
                    T steps of ``optax.sgd(0.1)`` on the vodes (a Python loop unrolled in
                    ``pxf.jit``), then the weight gradient

Both PCs minimise, per sample, E_b = sum_{l=1,2} 1/2 ||x_l - relu(W_l x_{l-1} + b_l)||^2
+ lam CE(W_3 x_2 + b_3, y_b) over the hidden x_1, x_2 (x_0 the clamped input) from the
feedforward pass, by T steps x <- x - 0.1 dE_b/dx, and return (1/lam) dE/dtheta of the batch
mean at the final state (PCX: its gradient of the batch-summed energy, times 1/(lam B)). The
differences that remain: pl_energy forms each error in difference form (carried eps_l instead of
x_l - mu_l, see ``PCState``), PCX as h - u; pl_energy checks the energy and reports convergence
(``Estimate``), PCX does neither; PCX's time includes moving its parameters across the jit
boundary in Python, pl_energy's its checks. Before timing, the gradients of both libraries at
every T are compared with each other and with a float64 hand-written loop
(``pc_fused_reference.make_fused``; its float32 run gives the rounding level), and the run stops if
either library is more than ``--rounding-factor`` times that rounding off.

Reported: per round, each variant's time is the median of ``--inner`` back-to-back calls; the
ratio of a PC row to a BP row is the median over rounds of the per-round ratio (interquartile
range beside it). Load averages before and after, and the processor, are printed with the table.

    python benchmarks/bench_pcx.py --pcx-python /path/to/venv-pcx/bin/python   # 15 rounds
    python benchmarks/bench_pcx.py --torch-only --rounds 1 --steps 2            # no PCX needed
    python benchmarks/bench_pcx.py --pcx-python ... --compiled                 # and compiled estimates

Without PCX (``--pcx-python`` or ``$PL_ENERGY_PCX_PYTHON`` naming a Python that imports
``jax`` and ``pcx``, else this Python) it prints one "skipped" line and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
SKIPPED = "skipped: PCX/JAX not installed (pip install pcx in a separate venv, then --pcx-python PATH)"
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pcx-python", default=os.environ.get("PL_ENERGY_PCX_PYTHON"),
                        help="a Python with jax and pcx (default $PL_ENERGY_PCX_PYTHON, else this Python)")
    parser.add_argument("--torch-only", action="store_true", help="time pl_energy's side alone")
    parser.add_argument("--compiled", action="store_true",
                        help="also time pc_nudge compiled (compile_inference={})")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 20, 50], help="inference steps T")
    parser.add_argument("--step-size", type=float, default=0.1)
    parser.add_argument("--lam", type=float, default=0.01, help="weight of the supervised term")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--inner", type=int, default=5, help="back-to-back calls per variant per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per torch variant")
    parser.add_argument("--cpu", type=int, default=None,
                        help="pin both processes to this CPU (default: the last one allowed; -1: no pinning)")
    parser.add_argument("--rounding-factor", type=float, default=10.0,
                        help="the gradients may be this many times the float32 loop's rounding off the float64 loop")
    return parser.parse_args(argv)


def pcx_python(args) -> str | None:
    """The Python that runs the PCX side, or None when none imports jax and pcx."""
    candidate = args.pcx_python or sys.executable
    try:
        probe = subprocess.run([candidate, "-c", "import jax, pcx"], capture_output=True)
    except OSError:  # no such Python
        return None
    return candidate if probe.returncode == 0 else None


def pin(cpu: int | None) -> str:
    """Pin this process (and the worker it starts) to one CPU; returns what was done."""
    if cpu == -1 or not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    chosen = max(os.sched_getaffinity(0)) if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return f"pinned to CPU {chosen}"


def processor() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def load_averages() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def time_round(variants: dict, inner: int, rotate: int) -> dict[str, float]:
    """One round: each variant called ``inner`` times back to back (its time: the median), the
    variants in their order rotated by ``rotate``. Each call must return once its work is done.
    Shared with the PCX worker (this module imports neither torch nor JAX at its top)."""
    keys = list(variants)
    shift = rotate % len(keys)
    times = {}
    for key in keys[shift:] + keys[:shift]:
        samples = []
        for _ in range(inner):
            start = time.perf_counter()
            variants[key]()
            samples.append(time.perf_counter() - start)
        times[key] = statistics.median(samples)
    return times


class TorchSide:
    """pl_energy's variants on the case's network and batch."""

    def __init__(self, args):
        import torch
        import torch.nn.functional as F

        sys.path.insert(0, str(BENCHMARKS))
        import bench_step  # noqa: F401  (puts the repository and step_benchmark on sys.path)
        from pl_energy import build_algorithm
        from step_benchmark.cases import seed_mlp_batch

        torch.set_num_threads(1)
        self.net, self.x, self.y, real = seed_mlp_batch()
        self.data = "real MNIST (seeded train split, first batch)" if real else \
            "RANDOM inputs: MNIST not found (set PL_ENERGY_DATA)"
        self.params = list(self.net.parameters())
        self.args = args

        def autograd():
            return torch.autograd.grad(F.cross_entropy(self.net(self.x), self.y), self.params)

        def estimate(algorithm):
            return lambda: algorithm.estimate(self.net, self.x, self.y, loss="cross_entropy", record=False)

        self.variants = {"bp_autograd": autograd, "bp_library": estimate(build_algorithm("bp"))}
        for steps in args.steps:
            for suffix, extra in (("", {}), ("_bare", {"error_estimate": False})):
                self.variants[f"pc_nudge_{steps}{suffix}"] = estimate(self.pc_nudge(steps, **extra))
            if self.args.compiled:
                compiled = self.pc_nudge(steps)
                compiled.compile_inference = {}
                self.variants[f"pc_nudge_{steps}_compiled"] = estimate(compiled)
        for call in self.variants.values():
            for _ in range(args.warmup):
                call()

    def pc_nudge(self, steps: int, **extra):
        from pl_energy import build_algorithm

        return build_algorithm("pc_nudge", solver="gd", steps=steps, step_size=self.args.step_size, tol=None,
                               lam=self.args.lam, **extra)

    def weights(self) -> dict:
        """Everything the worker needs, as numpy arrays (the .npz it reads)."""
        data = {name: p.detach().numpy() for name, p in self.net.named_parameters()}
        data.update(x=self.x.numpy(), y=self.y.numpy(), classes=10, lam=self.args.lam,
                    step_size=self.args.step_size, steps=list(self.args.steps))
        return data

    def gradients(self, steps: int) -> tuple[dict, list[str]]:
        """pc_nudge's gradients after ``steps`` steps, and the warnings it gave."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            estimate = self.pc_nudge(steps).estimate(self.net, self.x, self.y, loss="cross_entropy", record=False)
        return ({name: g.detach().numpy() for name, g in estimate.gradients.items()},
                [str(w.message).split(": use ")[0] for w in caught])

    def float64_reference(self, steps: int) -> dict:
        """The hand-written loop of ``pc_fused_reference.py`` in float64: an independent oracle."""
        import torch

        return self._fused(steps, torch.float64)

    def float32_reference(self, steps: int) -> dict:
        """The same loop in float32: how far float32 rounding alone moves the gradients."""
        import torch

        return self._fused(steps, torch.float32)

    def _fused(self, steps: int, dtype) -> dict:
        import torch.nn.functional as F
        from pc_fused_reference import make_fused

        net = copy.deepcopy(self.net).to(dtype)
        fused = make_fused(net, F.one_hot(self.y, 10).to(dtype), steps=steps, step_size=self.args.step_size,
                           lam=self.args.lam)
        return {name: g.numpy() for name, g in fused(self.x.to(dtype)).items()}

    def round(self, inner: int, rotate: int) -> dict[str, float]:
        return time_round(self.variants, inner, rotate)


class PCXWorker:
    """``pcx_side.py`` in the PCX environment, spoken to one JSON line at a time."""

    def __init__(self, python: str, npz: Path):
        env = dict(os.environ, XLA_FLAGS=ONE_THREAD_XLA, JAX_PLATFORMS="cpu")
        self.process = subprocess.Popen([python, str(BENCHMARKS / "pcx_side.py"), str(npz)], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.versions = self._read()["versions"]

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the PCX worker stopped (exit code {self.process.wait()}); its error is above")
        reply = json.loads(line)
        if "error" in reply:
            raise SystemExit(f"the PCX worker: {reply['error']}")
        return reply

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.process.stdin.close()
            except OSError:  # it stopped meanwhile
                pass
            self.process.wait(timeout=30)


def relative_difference(a: dict, b: dict) -> float:
    """The largest over parameters of ||a - b|| / ||b|| (Frobenius, in float64); inf where any
    is not finite (a NaN would otherwise pass ``max`` and every comparison with a tolerance)."""
    ratios = [float(np.linalg.norm(a[k].astype(np.float64) - b[k]) / np.linalg.norm(b[k])) for k in b]
    return max(ratios) if all(math.isfinite(ratio) for ratio in ratios) else math.inf


def check_equivalence(side: TorchSide, worker: PCXWorker | None, folder: Path, factor: float) -> list[str]:
    """The gradients at every T against the float64 loop: the float32 loop (the rounding level),
    pl_energy, PCX, and pl_energy against PCX; raises if either library is more than ``factor``
    times the float32 loop's rounding (floor 1e-5) off, or the two further than twice that apart."""
    lines = ["| T | float32 loop (rounding) | pl_energy | PCX | pl_energy vs PCX | allowed |",
             "|---|---|---|---|---|---|"]
    failed, notes = [], []
    for steps in side.args.steps:
        exact = side.float64_reference(steps)
        rounding = relative_difference(side.float32_reference(steps), exact)
        allowed = factor * max(rounding, 1e-5)
        ours, warned = side.gradients(steps)
        notes += [f"T = {steps}: pl_energy warns: {message}" for message in warned]
        row = [rounding, relative_difference(ours, exact)]
        if worker is not None:
            path = folder / f"pcx_gradients_{steps}.npz"
            worker.ask(cmd="gradients", steps=steps, path=str(path))
            with np.load(path) as saved:
                theirs = {k: saved[k] for k in ours}
            row += [relative_difference(theirs, exact), relative_difference(ours, theirs)]
        if max(row[1:3]) > allowed or row[3:] and row[3] > 2 * allowed:
            failed.append(steps)
        cells = [f"{value:.1e}" for value in row] + ["-"] * (4 - len(row)) + [f"{allowed:.1e}"]
        lines.append(f"| {steps} | " + " | ".join(cells) + " |")
    if failed:
        print("\n".join(lines))
        raise SystemExit(f"the gradients at T = {failed} differ beyond {factor:g}x float32 rounding: the timings "
                         "would not compare the same computation (--rounding-factor to loosen)")
    return lines + notes


def paired_summary(first: list[dict], second: list[dict], numerator: str, denominator: str) -> str:
    """Median (interquartile range) over rounds of first[numerator] / second[denominator]."""
    ratios = [a[numerator] / b[denominator] for a, b in zip(first, second)]
    low, high = np.quantile(ratios, [0.25, 0.75])
    return f"{statistics.median(ratios):.2f}x ({low:.2f}-{high:.2f})"


def ratio_summary(rounds: list[dict], numerator: str, denominator: str) -> str:
    return paired_summary(rounds, rounds, numerator, denominator)


def per_step(rounds: list[dict], key: str, steps: list[int]) -> str:
    """The cost of one inference step and of the rest (the T = 0 intercept), from the line through
    the smallest and largest T, medians over rounds."""
    low, high = min(steps), max(steps)
    slopes = [(r[f"{key}_{high}"] - r[f"{key}_{low}"]) / (high - low) for r in rounds]
    fixed = [r[f"{key}_{low}"] - slope * low for r, slope in zip(rounds, slopes)]
    return f"{1e6 * statistics.median(slopes):.0f} us/step + {1e3 * statistics.median(fixed):.2f} ms"


def report(args, torch_rounds: list[dict], pcx_rounds: list[dict]) -> list[str]:
    def ms(rounds, key):
        return f"{1e3 * statistics.median(r[key] for r in rounds):.2f}"

    pcx = bool(pcx_rounds)
    lines = ["| T | ours pc_nudge / ours bp | ours / plain autograd | ours bare / plain autograd "
             "| PCX pc / PCX bp | PCX pc / jax.grad | ours / PCX (time) | ms: ours, ours bare, PCX |",
             "|---|---|---|---|---|---|---|---|"]
    for steps in args.steps:
        key = f"pc_nudge_{steps}"
        cells = [ratio_summary(torch_rounds, key, "bp_library"), ratio_summary(torch_rounds, key, "bp_autograd"),
                 ratio_summary(torch_rounds, key + "_bare", "bp_autograd"),
                 ratio_summary(pcx_rounds, key, "bp_pcx") if pcx else "-",
                 ratio_summary(pcx_rounds, key, "bp_jax") if pcx else "-",
                 paired_summary(torch_rounds, pcx_rounds, key, key) if pcx else "-",
                 f"{ms(torch_rounds, key)}, {ms(torch_rounds, key + '_bare')}, "
                 + (ms(pcx_rounds, key) if pcx else "-")]
        lines.append(f"| {steps} | " + " | ".join(cells) + " |")
    if args.compiled:
        lines += ["", "| T | ours compiled / plain autograd | ours compiled / ours eager | ours compiled / PCX (time) "
                      "| ms: ours compiled, PCX |", "|---|---|---|---|---|"]
        for steps in args.steps:
            key = f"pc_nudge_{steps}"
            lines.append(f"| {steps} | {ratio_summary(torch_rounds, key + '_compiled', 'bp_autograd')} | "
                         f"{ratio_summary(torch_rounds, key + '_compiled', key)} | "
                         + (paired_summary(torch_rounds, pcx_rounds, key + "_compiled", key) if pcx else "-")
                         + f" | {ms(torch_rounds, key + '_compiled')}, " + (ms(pcx_rounds, key) if pcx else "-") + " |")
    lines += ["", f"BP, ms: plain autograd {ms(torch_rounds, 'bp_autograd')}, library bp "
                  f"{ms(torch_rounds, 'bp_library')} ({ratio_summary(torch_rounds, 'bp_library', 'bp_autograd')} "
                  "autograd)" + (f"; jax.grad {ms(pcx_rounds, 'bp_jax')}, PCX bp {ms(pcx_rounds, 'bp_pcx')} "
                                 f"({ratio_summary(pcx_rounds, 'bp_pcx', 'bp_jax')} jax.grad)" if pcx else "")]
    if len(set(args.steps)) > 1:
        lines.append(f"time = per step x T + the rest (line through T = {min(args.steps)} and {max(args.steps)}): "
                     f"ours {per_step(torch_rounds, 'pc_nudge', args.steps)}"
                     + (f", PCX {per_step(pcx_rounds, 'pc_nudge', args.steps)}" if pcx else ""))
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    python = None
    if not args.torch_only:
        python = pcx_python(args)
        if python is None:
            print(SKIPPED)
            return 0
    sys.path.insert(0, str(BENCHMARKS.parent))
    from pl_energy.algorithms.warnings import EstimateErrorWarning

    with warnings.catch_warnings():
        # few fixed steps at lam = 0.01 are far from BP's gradient, as the papers run them: the
        # equivalence check lists the warnings once; the timed calls still run the check, silently
        warnings.filterwarnings("ignore", category=EstimateErrorWarning)
        return run(args, python)


def run(args, python: str | None) -> int:
    """Pin, check the gradients, time the interleaved rounds, print the report."""
    pinned = pin(args.cpu)
    load_before = load_averages()
    side = TorchSide(args)
    with tempfile.TemporaryDirectory() as folder:
        worker = None
        if python is not None:
            npz = Path(folder) / "case.npz"
            np.savez(npz, **side.weights())
            worker = PCXWorker(python, npz)
        try:
            equivalence = check_equivalence(side, worker, Path(folder), args.rounding_factor)
            torch_rounds, pcx_rounds = [], []
            for index in range(args.rounds):
                order = ("torch", "pcx") if index % 2 == 0 else ("pcx", "torch")
                for name in order:
                    if name == "torch":
                        torch_rounds.append(side.round(args.inner, index))
                    elif worker is not None:
                        pcx_rounds.append(worker.ask(cmd="round", inner=args.inner, rotate=index)["times"])
        finally:
            if worker is not None:
                worker.close()
    import torch

    print(f"case: mlp([784, 128, 64, 10]), batch 64, {side.data}, float32, 1 thread ({pinned}); "
          f"PC-Nudge gd, step size {args.step_size:g}, lam {args.lam:g}")
    print(f"{args.rounds} interleaved rounds, median of {args.inner} calls per variant per round; "
          f"ratios: median over rounds (interquartile range)")
    print(f"processor: {processor()}; load averages (1/5/15 min) before {load_before}, after {load_averages()}")
    print(f"torch {torch.__version__}" + (f"; jax {worker.versions['jax']}, pcx {worker.versions['pcx']}"
                                          if worker is not None else "; PCX not run (--torch-only)"))
    print("\n" + "\n".join(report(args, torch_rounds, pcx_rounds)))
    print("\nrelative gradient differences (largest over parameters, Frobenius):\n" + "\n".join(equivalence))
    return 0


if __name__ == "__main__":
    sys.exit(main())
