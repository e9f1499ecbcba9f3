#!/usr/bin/env python3
"""Time one training step of every algorithm as a ratio to backprop (issue 6, measurement part).

A *training step* is ``alg.estimate(net, x, y, loss="cross_entropy", record=False)`` followed by
applying the returned gradients with SGD (``p.grad = g; opt.step()``). The reference, "BP", is
textbook autograd: ``opt.zero_grad(); loss_fn(net(x), y).backward(); opt.step()``; the ``bp``
algorithm is timed the same way as every other algorithm and must be no slower.

Cases
  a  ``mlp([784, 128, 64, 10])``, batch 64, real MNIST (Millidge et al. 2022 A.1), cross-entropy
  b  ``mlp([50176, 4096, 2048, 1024, 27])``, batch 1, random float32 input (Song et al. 2020 A.9)
  c  a small CNN on MNIST (1x28x28), batch 64
  d  VGG-5 at full width (128-256-512-512, ``pl_energy.core.networks.VGG``), batch 32, random
     3x32x32 input (CIFAR-shaped): the PC benchmarks' network (Pinchetti et al. 2024)
  e  a 20-layer residual MLP (``ResidualMLP``, width 128, tanh, muPC), batch 64, real MNIST
     (ep/chl: n/a, a residual block is not a Hopfield coupling)
  f  VGG-5 as in (d) with a smooth energy: tanh units and average pooling

ep and chl run on the case's network with clip units instead of ReLU/tanh (``Case.hopfield_build``:
the same layers and MACs; a Hopfield energy of unbounded units has a minimum only while its
couplings are weak), initialised from the same seed.

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
    python benchmarks/bench_step.py --device cuda --case d f --compile   # compiled layers
    python benchmarks/bench_step.py --quick         # tiny nets, 2 repeats (smoke test)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):  # run from a checkout without installing
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from pl_energy import mlp  # noqa: E402,F401  (re-exported for the tests)
from step_benchmark.cases import cases, cnn  # noqa: E402,F401
from step_benchmark.cost import bound_macs, layer_macs  # noqa: E402,F401
from step_benchmark.measure import compile_options, run_case  # noqa: E402
from step_benchmark.profiling import profile_variant  # noqa: E402
from step_benchmark.report import section, section_key, write_results  # noqa: E402
from step_benchmark.variants import VARIANTS, Variant  # noqa: E402,F401

RESULTS = REPO / "benchmarks" / "RESULTS.md"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", nargs="+", choices=tuple("abcdef"), default=list("abcdef"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timings are synchronised)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds (default: a 51, b 21, c 31, d 5, e 21, f 5; quick 2)")
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
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="compile every layer of the networks and the PC inference steps with "
                             "torch.compile (backend: inductor unless given), as EnergyModule(compile=...) "
                             "does; the section is kept apart from the eager one")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile's mode with --compile, e.g. reduce-overhead (CUDA graphs)")
    parser.add_argument("--verbose", action="store_true", help="progress on stderr")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    if args.compile_mode and not args.compile:
        raise SystemExit("--compile-mode needs --compile")
    torch.set_num_threads(args.threads)
    all_cases = cases(args.quick)
    if args.profile:
        for key in args.case:
            print(profile_variant(all_cases[key], args.profile, device, compiled=compile_options(args)))
        return {}
    command = "python benchmarks/bench_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = {}
    for key in args.case:
        case = all_cases[key]
        print(f"case ({key}): {case.title}", flush=True)
        result = results[key] = run_case(case, args, device)
        text = section(result, command.strip(), device)
        print(text, flush=True)
        if not args.no_write:  # case by case: a run stopped half-way keeps the cases it finished
            write_results(args.output, {section_key(key, device, result.get("compiled")): text})
            print(f"wrote case ({key}) to {args.output}", flush=True)
    return results


if __name__ == "__main__":
    main()
