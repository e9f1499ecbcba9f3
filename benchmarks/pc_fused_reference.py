#!/usr/bin/env python3
"""How fast can PC-Nudge on case (a) be in plain torch? Two yardsticks for the core.

- The papers' dynamics (default): a hand-fused inference loop for ``mlp([784, 128, 64, 10])``
  (relu, CE) with 12 aten ops per inference step, T = 50 steps of gd at lam = 0.01.
- ``--default``: the library's default estimate (lam "auto", the error solver stopped at its
  first-order start), written as one Python function with every verification the library's
  estimate makes on this network: the class range, the units on a ReLU kink at the free state
  (where the library pins them, this hands over), the automatic lam from the displacement per
  unit, the residual of the nudged phase at its start, the error bound against the limit's
  parameter VJPs, the finite loss; five host reads. Its matrix products are the library's
  (3 S + 3 S2 multiply-accumulates against BP's 2 S + S2: ``bench_overhead.mac_bound``), so
  its time against the library's is the cost of the library's Python around them.

Each runs eagerly and (``--compile``) under ``torch.compile``, timed against BP (textbook
``backward()``; plain ``torch.autograd.grad`` with ``--default``, ``bench_overhead.py``'s
denominator) and the library's ``pc_nudge`` in alternation (one thread, medians of per-round
ratios). It checks that its gradients equal the library's. Not part of the library: it only
shows what the estimate costs without the library's per-op overhead.

    python benchmarks/pc_fused_reference.py [--default] [--compile] [--repeats 31]
"""

from __future__ import annotations

import argparse
import math
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


def make_default(net, y, tol=1e-4):
    """The default pc_nudge estimate of ``net`` (``mlp([784, 128, 64, 10])``, gamma 1) on
    class indices ``y``, with the library's verifications (module docstring); returns
    (gradients by parameter name, lam, per-layer error bound), or raises where the library
    hands over or refuses."""
    (W1, b1), (W2, b2), (W3, b3) = [(layer.weight.detach(), layer.bias.detach())
                                    for layer in (net[0][0], net[1][0], net[2])]
    norm = torch.linalg.vector_norm

    @torch.no_grad()
    def default(x):
        low, high = torch.aminmax(y)
        if low.item() < 0 or high.item() >= W3.shape[0]:
            raise ValueError("class indices out of range")
        batch, epsilon = x.shape[0], torch.finfo(x.dtype).eps
        a1 = torch.addmm(b1, x, W1.t())                   # the free state: mu_l = f(a_l)
        mu1 = a1.relu()
        a2 = torch.addmm(b2, mu1, W2.t())
        mu2 = a2.relu()
        out = torch.addmm(b3, mu2, W3.t())
        onehot = out.new_zeros(out.shape).scatter_(1, y.unsqueeze(1), 1.0)
        dl = torch.softmax(out, 1) - onehot               # dl/dmu_L per sample
        r2 = -(dl @ W3)                                   # the first-order response r_l
        r1 = -(threshold_backward(-r2, a2, 0) @ W2)
        sizes = torch.stack([norm(mu1, dim=1), norm(mu2, dim=1)])
        means = sizes.mean(1)
        moves = torch.stack([norm(r1, dim=1), norm(r2, dim=1)])
        kinks = a1.numel() - torch.count_nonzero(a1) + a2.numel() - torch.count_nonzero(a2)
        smallest, ratio, on_kink = torch.stack([means.min(), (moves / torch.maximum(sizes, means.unsqueeze(1))).max(),
                                                kinks.to(x.dtype)]).tolist()
        if on_kink or not smallest > 0 or not ratio > 0:
            raise ValueError("the library pins kinks or guards a dead layer here: not written out")
        lam = epsilon / ratio                             # one rounding unit of displacement
        e1, e2 = r1 * lam, r2 * lam                       # the first-order start, carried
        x1 = mu1 + e1
        a2n = torch.addmm(b2, x1, W2.t())
        x2 = a2n.relu() + e2
        dln = torch.softmax(torch.addmm(b3, x2, W3.t()), 1) - onehot
        up2 = dln @ W3                                    # dE/de_l = e_l + lam J^T ... dl
        up1 = threshold_backward(up2, a2n, 0) @ W2
        balance = torch.stack(torch._foreach_norm([torch.add(e1, up1, alpha=lam), torch.add(e2, up2, alpha=lam),
                                                   e1, e2, up1 * lam, up2 * lam]))
        scale = 1.0 / (lam * batch)                       # (1/lam) dE/dtheta, batch mean
        d1 = threshold_backward(e1 * -scale, a1, 0)
        d2 = threshold_backward(e2 * -scale, a2n, 0)
        d3 = dln * (lam * scale)
        update = [d1.t() @ x, d1.sum(0), d2.t() @ x1, d2.sum(0), d3.t() @ x2, d3.sum(0)]
        c1 = threshold_backward(r1 * (-1.0 / batch), a1, 0)  # the limit lam -> 0: BP's gradient
        c2 = threshold_backward(r2 * (-1.0 / batch), a2, 0)
        c3 = dl / batch
        limit = [c1.t() @ x, c1.sum(0), c2.t() @ mu1, c2.sum(0), c3.t() @ mu2, c3.sum(0)]
        sizes = torch._foreach_norm(limit)
        reads = torch.cat([balance, torch.stack([*torch._foreach_norm(torch._foreach_sub(limit, update)), *sizes]),
                           F.cross_entropy(out, y).reshape(1)]).tolist()
        gradient, local, rest = reads[0:2], reads[2:4], reads[4:6]
        if not max(g / (a + r) for g, a, r in zip(gradient, local, rest)) <= tol:
            raise ValueError("the first-order start is not converged: the library takes steps here")
        if not math.isfinite(reads[-1]):
            raise ValueError("the loss is not finite")
        differences, sizes = reads[6:12], reads[12:18]
        bound = [math.hypot(*differences[2 * l:2 * l + 2]) / math.hypot(*sizes[2 * l:2 * l + 2]) for l in range(3)]
        names = ["0.0.weight", "0.0.bias", "1.0.weight", "1.0.bias", "2.weight", "2.bias"]
        return dict(zip(names, update)), lam, bound

    return default


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(fused)")
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--default", action="store_true",
                        help="the default estimate with its verifications, against plain autograd BP")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    net, x, y, _ = seed_mlp_batch()
    if args.default:
        return default_main(net, x, y, args)
    fused = make_fused(net, F.one_hot(y, 10).float())
    library = build_algorithm("pc_nudge", lam=0.01, solver="gd", tol=None, steps=50, step_size=0.1)

    def textbook():
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()

    functions = {"bp_textbook (no optimiser)": textbook,
                 "library pc_nudge.estimate": lambda: library.estimate(net, x, y, record=False),
                 "hand-fused eager": lambda: fused(x)}
    if args.compile:
        functions["hand-fused torch.compile"] = compiled_call(fused, x)
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


def compiled_call(function, x):
    """``function`` under ``torch.compile``, compiled by a first call on ``x`` (its time
    printed), as a call of no arguments for the timing loops."""
    compiled = torch.compile(function)
    start = time.perf_counter()
    compiled(x)
    print(f"torch.compile: first call {time.perf_counter() - start:.1f} s")
    return lambda: compiled(x)


def default_main(net, x, y, args) -> float:
    """``--default``: the hand-written default estimate against the library's and plain
    autograd BP, ratios per round (rounds rotate the order), medians, and the MAC bound."""
    from bench_overhead import mac_bound
    from bench_pcx import load_averages, time_round

    library, written, params = build_algorithm("pc_nudge"), make_default(net, y), list(net.parameters())
    functions = {"plain autograd BP": lambda: torch.autograd.grad(F.cross_entropy(net(x), y), params),
                 "library pc_nudge (default)": lambda: library.estimate(net, x, y),
                 "written out, eager": lambda: written(x)}
    if args.compile:
        functions["written out, torch.compile"] = compiled_call(written, x)
    print(f"load before {load_averages()}")
    for function in functions.values():
        for _ in range(5):
            function()
    keys, ratios = list(functions), {key: [] for key in functions}
    for round_ in range(args.repeats):
        times = time_round(functions, 10, round_)
        for key in keys:
            ratios[key].append(times[key] / times[keys[0]])
    bound = mac_bound(net, x)
    print(f"load after {load_averages()}; MAC bound of the default estimate {bound:.3f}x BP")
    for key in keys:
        ratio = statistics.median(ratios[key])
        print(f"{key:28s} {ratio:5.2f}x plain autograd = {ratio / bound:5.2f}x the MAC bound")
    estimate = library.estimate(net, x, y)
    gradients, lam, bound_per_layer = written(x)
    print(f"lam: library {estimate.nudge:.6g}, written out {lam:.6g}; error bound: library "
          f"{max(estimate.error_bound.values()):.1e}, written out {max(bound_per_layer):.1e}")
    error = max(float((gradients[k] - g).norm() / g.norm()) for k, g in estimate.gradients.items())
    print(f"largest relative difference of the written-out gradients from the library's: {error:.1e}")
    return error


if __name__ == "__main__":
    main()
