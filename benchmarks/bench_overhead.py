#!/usr/bin/env python3
"""The per-call cost of ``estimate`` beyond its arithmetic (issue 25: "BP without overhead",
"no per-call overhead") on Millidge et al. 2022's MLP 784-128-64-10 (ReLU, linear output), the
first real MNIST batch of 64 of ``bench_step.py``'s case (a), float32, one thread.

Variants, each a call that returns once its work is done:

- ``bp_autograd``: ``torch.autograd.grad(F.cross_entropy(net(x), y), params)``, the reference;
- ``bp_step``: a textbook training step, ``opt.zero_grad(); F.cross_entropy(net(x), y).backward();
  opt.step()`` (SGD), the denominator of ``bench_step.py``'s ratios;
- ``bp``: ``build_algorithm("bp").estimate(net, x, y)`` (target: <= 1.10x ``bp_autograd``);
- ``pc_nudge``: the default ``build_algorithm("pc_nudge").estimate(net, x, y)`` (lam "auto",
  error solver; it converges at its first-order start on this net, 0 steps). Its MAC bound is
  3 S + 3 S2 with S the forward MACs and S2 those of every layer but the first (forward,
  response sweep, the nudged start's re-linearising pass, one residual check, the update's and
  the error estimate's parameter VJPs), against BP's 2 S + S2; target: <= 1.3x that bound;
- ``pc_nudge_step``: ``pc_nudge`` and its update applied by the same SGD (``p.grad = g``), the
  numerator of ``bench_step.py``'s ratio, to be read against ``bp_step``.

``--algorithms`` names the library variants (default ``bp pc_nudge``: each as an estimate and as
a training step); ``--units clip`` gives the MLP clip units in place of ReLU (the same seed), the
network ``probe_training.py`` gives ep and chl, whose Hopfield energies need bounded units:
``--units clip --algorithms chl ep`` times them at initialisation (issue 25: chl <= 10x, ep <= 20x
plain autograd BP).

The SGD learning rate is 0, so every call sees the same network.

``--compiled`` adds each non-bp variant with ``compile_inference={}`` (``torch.compile``, inductor:
the default pc_nudge estimate as one graph, ``algorithms.graph_estimate``), compiled in the warm-up.

``--before REV`` also times both library variants of the package as it was at git revision REV
(extracted to a temporary folder and imported as ``pl_energy_before``), interleaved with the
current ones, so that a change is measured under the same load.

Protocol: ``--rounds`` rounds, each calling every variant ``--inner`` times back to back (its
time: the median), in an order rotated from round to round; reported: the median time and the
median over rounds of the per-round ratio to ``bp_autograd`` (to ``bp_step`` for the steps;
interquartile range in brackets),
with the load averages before and after.

    python benchmarks/bench_overhead.py --rounds 31 --before main
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import warnings
from io import BytesIO
from pathlib import Path

import torch
import torch.nn.functional as F

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
import bench_step  # noqa: E402,F401  (puts the repository and step_benchmark on sys.path)
from bench_pcx import load_averages, time_round  # noqa: E402
from step_benchmark.cases import seed_mlp_batch  # noqa: E402
import pl_energy  # noqa: E402
from step_benchmark.cost import layer_macs  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--inner", type=int, default=10, help="calls per variant per round")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--before", default=None, help="a git revision to time beside the working tree")
    parser.add_argument("--algorithms", nargs="+", default=["bp", "pc_nudge"], help="library variants")
    parser.add_argument("--units", choices=("relu", "clip"), default="relu", help="the MLP's hidden units")
    parser.add_argument("--compiled", action="store_true",
                        help="also time each non-bp variant with compile_inference={} (inductor)")
    return parser.parse_args(argv)


def import_revision(revision: str):
    """The ``pl_energy`` package at git ``revision``, imported as ``pl_energy_before``."""
    archive = subprocess.run(["git", "-C", str(BENCHMARKS.parent), "archive", revision, "pl_energy"],
                             capture_output=True, check=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="pl_energy_before_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # imported modules are in memory by then
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "pl_energy").rename(folder / "pl_energy_before")
    sys.path.insert(0, str(folder))
    return importlib.import_module("pl_energy_before")


def mac_bound(network, x) -> float:
    """pc_nudge's MACs over BP's: (3 S + 3 S2) / (2 S + S2)."""
    macs = layer_macs(network, x)
    full, above_first = sum(macs), sum(macs[1:])
    return (3 * full + 3 * above_first) / (2 * full + above_first)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    net, x, y, real = seed_mlp_batch()

    def network_of(package):
        """The MLP with clip units built by ``package`` (each package knows its own Clip)."""
        torch.manual_seed(0)
        return package.mlp([784, 128, 64, 10], activation="clip")

    if args.units == "clip":
        net = network_of(pl_energy)
    params = list(net.parameters())

    def autograd():
        return torch.autograd.grad(F.cross_entropy(net(x), y), params)

    optimizer = torch.optim.SGD(params, lr=0.0)

    def bp_step():
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()

    def estimate(algorithm, network):
        return lambda: algorithm.estimate(network, x, y)

    def training_step(algorithm, network):
        own = torch.optim.SGD(network.parameters(), lr=0.0)

        def step():
            gradients = algorithm.estimate(network, x, y).gradients
            for name, parameter in network.named_parameters():
                parameter.grad = gradients[name]
            own.step()
        return step

    packages = {"": pl_energy}
    if args.before:
        packages["before "] = import_revision(args.before)
    variants = {"bp_autograd": autograd, "bp_step": bp_step}
    for prefix, package in packages.items():
        network = net if args.units == "relu" else network_of(package)
        for name in args.algorithms:
            variants[f"{prefix}{name}"] = estimate(package.build_algorithm(name), network)
            if name != "bp":
                variants[f"{prefix}{name}_step"] = training_step(package.build_algorithm(name), network)
            if name != "bp" and args.compiled and package is pl_energy:
                compiled = package.build_algorithm(name)
                compiled.compile_inference = {}
                variants[f"{name}_compiled"] = estimate(compiled, network)
                variants[f"{name}_compiled_step"] = training_step(compiled, network)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning on this batch would make the timing meaningless
        for call in variants.values():
            for _ in range(args.warmup):
                call()
    bound = mac_bound(net, x)
    print(f"data: {'real MNIST' if real else 'RANDOM (MNIST not found)'}; {args.units} units; "
          f"load before {load_averages()}")
    rounds = [time_round(variants, args.inner, index) for index in range(args.rounds)]
    bound_line = f"; pc_nudge MAC bound {bound:.3f}x BP" if "pc_nudge" in args.algorithms else ""
    print(f"load after {load_averages()}; {args.rounds} rounds x {args.inner} calls{bound_line}")
    for key in variants:
        reference = "bp_step" if key.endswith("_step") else "bp_autograd"
        ratios = [r[key] / r[reference] for r in rounds]
        low, median, high = statistics.quantiles(ratios, n=4)
        milliseconds = statistics.median(r[key] for r in rounds) * 1e3
        line = f"{key:20s} {milliseconds:7.3f} ms  {median:5.3f}x {reference} [{low:.3f}-{high:.3f}]"
        if "pc_nudge" in key and args.units == "relu":
            line += f"  = {median / bound:.3f}x its MAC bound"
        print(line)


if __name__ == "__main__":
    main()
