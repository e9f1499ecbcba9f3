"""Song et al. 2020 A.9 running time: one training iteration of BP, IL, Z-IL and Fa-Z-IL, as ratios to BP.

The A.9 ImageNet FC net ``mlp([50176, 4096, 2048, 1024, 27])`` (224x224 grayscale flattened, 27
high-level classes), float32, batch size 1, ``torch.set_num_threads(1)``. ImageNet is not
available here, so the input is random (uniform [0, 1]) with a random label: the cost of an
iteration does not depend on the pixel values. One iteration = the algorithm's gradient estimate
plus the SGD update of every parameter. IL = ``pc`` with T = 20 inference steps (lam = 1); Z-IL
and Fa-Z-IL with their defaults (gamma = 1). Median of ``--repeats`` (>= 10) after 2 warm-ups;
the algorithms are interleaved so that load from other processes hits all of them alike.
"""

from __future__ import annotations

import statistics
import time

import torch

from common import parser, plt, save_figure, save_json, setup

import pl_energy

SIZES = [50176, 4096, 2048, 1024, 27]
QUICK_SIZES = [1024, 256, 128, 64, 27]


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None, help="default 10 (quick 3)")
    p.add_argument("--il-steps", type=int, default=20)
    p.set_defaults(threads=1)
    args = p.parse_args(argv)
    out = setup(args)
    sizes = QUICK_SIZES if args.quick else SIZES
    repeats = args.repeats or (3 if args.quick else 10)
    torch.manual_seed(0)
    net = pl_energy.mlp(sizes)
    x = torch.rand(1, sizes[0])
    y = torch.randint(0, sizes[-1], (1,))
    algorithms = {
        "bp": pl_energy.build_algorithm("bp"),
        "il": pl_energy.build_algorithm("pc", solver="gd", tol=None, steps=args.il_steps, step_size=0.1, lam=1.0, trace=False),
        "z_il": pl_energy.build_algorithm("z_il"),
        "fa_z_il": pl_energy.build_algorithm("fa_z_il"),
    }
    params = dict(net.named_parameters())

    def iteration(alg):
        start = time.perf_counter()
        grads = alg.gradients(net, x, y, loss="mse")
        with torch.no_grad():
            for name, g in grads.items():
                params[name].sub_(1e-6 * g)
        return time.perf_counter() - start

    times = {name: [] for name in algorithms}
    for r in range(repeats + 2):
        for name, alg in algorithms.items():
            t = iteration(alg)
            if r >= 2:
                times[name].append(t)
    medians = {name: statistics.median(v) for name, v in times.items()}
    results = {"setup": {"sizes": sizes, "batch": 1, "dtype": "float32", "threads": args.threads,
                         "repeats": repeats, "il_steps": args.il_steps, "input": "random"},
               "seconds": times, "median_seconds": medians,
               "ratio_to_bp": {name: medians[name] / medians["bp"] for name in medians}}
    print("median s", medians, "ratio", results["ratio_to_bp"], flush=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = list(medians)
    ax.bar(names, [results["ratio_to_bp"][n] for n in names])
    for i, n in enumerate(names):
        ax.text(i, results["ratio_to_bp"][n], f"{results['ratio_to_bp'][n]:.2f}x\n{medians[n]*1e3:.0f} ms",
                ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="time per iteration / BP", title=f"A.9 FC net {sizes}, batch 1" if not args.quick
           else "timing (quick sizes)")
    ax.set_ylim(0, max(results["ratio_to_bp"].values()) * 1.3)
    save_figure(fig, out, "timing")
    save_json(out, "timing", results)
    return results


if __name__ == "__main__":
    main()
