#!/usr/bin/env python3
"""How fast can one PC-Nudge step (T = 50) on case (a) be in plain torch? A yardstick for the core.

A hand-fused inference loop for ``mlp([784, 128, 64, 10])`` (relu, CE) with 12 aten ops per
inference step, eager and (``--compile``) under ``torch.compile``, timed against textbook BP and
the library's ``pc_nudge`` in alternation (one thread, medians). It checks that its gradients
equal the library's. Not part of the library: it only shows what the step costs without
per-op overhead.

    python benchmarks/pc_fused_reference.py [--compile] [--repeats 31]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402,F401  (puts the repository and step_benchmark on sys.path)
from pl_energy import build_algorithm  # noqa: E402
from step_benchmark.cases import seed_mlp_batch  # noqa: E402

threshold_backward = torch.ops.aten.threshold_backward


def make_fused(net, onehot, steps=50, step_size=0.1, lam=0.01):
    (W1, b1), (W2, b2), (W3, b3) = [(layer.weight.detach(), layer.bias.detach())
                                    for layer in (net[0][0], net[1][0], net[2])]

    @torch.no_grad()
    def fused(x):
        mu1 = torch.addmm(b1, x, W1.t()).relu()          # layer 1: its input is clamped
        mu2 = torch.addmm(b2, mu1, W2.t()).relu()
        out = torch.addmm(b3, mu2, W3.t())
        x1, x2 = mu1.clone(), mu2.clone()
        for _ in range(steps):                            # 12 ops per inference step
            e1 = x1 - mu1
            e2 = x2 - mu2
            r = torch.softmax(out, 1).sub_(onehot)
            g2 = torch.addmm(e2, r, W3, alpha=lam)        # dE/dx2 = eps2 + lam J3^T dL
            g1 = torch.addmm(e1, threshold_backward(e2, mu2, 0), W2, alpha=-1)
            x1.add_(g1, alpha=-step_size)
            x2.add_(g2, alpha=-step_size)
            mu2 = torch.addmm(b2, x1, W2.t()).relu()
            out = torch.addmm(b3, x2, W3.t())
        scale = 1.0 / (lam * x.shape[0])                  # (1/lam) dE/dtheta, batch mean
        d1 = threshold_backward(mu1 - x1, mu1, 0) * scale
        d2 = threshold_backward(mu2 - x2, mu2, 0) * scale
        d3 = torch.softmax(out, 1).sub_(onehot) * (1.0 / x.shape[0])
        return {"0.0.weight": d1.t() @ x, "0.0.bias": d1.sum(0), "1.0.weight": d2.t() @ x1,
                "1.0.bias": d2.sum(0), "2.weight": d3.t() @ x2, "2.bias": d3.sum(0)}

    return fused


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(fused)")
    parser.add_argument("--repeats", type=int, default=31)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    net, x, y, _ = seed_mlp_batch()
    fused = make_fused(net, F.one_hot(y, 10).float())
    library = build_algorithm("pc_nudge", lam=0.01, solver="gd", tol=None, steps=50, step_size=0.1)

    def textbook():
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()

    functions = {"bp_textbook (no optimiser)": textbook,
                 "library pc_nudge.estimate": lambda: library.estimate(net, x, y, record=False),
                 "hand-fused eager": lambda: fused(x)}
    if args.compile:
        compiled = torch.compile(fused)
        start = time.perf_counter()
        compiled(x)
        print(f"torch.compile: first call {time.perf_counter() - start:.1f} s")
        functions["hand-fused torch.compile"] = lambda: compiled(x)
    for function in functions.values():
        for _ in range(3):
            function()
    times = {key: [] for key in functions}
    for _ in range(args.repeats):
        for key, function in functions.items():
            start = time.perf_counter()
            function()
            times[key].append(time.perf_counter() - start)
    base = times["bp_textbook (no optimiser)"]
    for key, values in times.items():
        ratio = statistics.median(a / b for a, b in zip(values, base))
        print(f"{key:28s} {1e3 * statistics.median(values):8.3f} ms   {ratio:5.2f}x BP")
    reference = library.estimate(net, x, y, record=False).gradients
    mine = fused(x)
    error = max(float((mine[k] - g).norm() / g.norm()) for k, g in reference.items())
    print(f"largest relative difference of the fused gradients from the library's: {error:.1e}")
    return error


if __name__ == "__main__":
    main()
