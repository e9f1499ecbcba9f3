"""EP and CHL (Millidge et al. 2022 Secs. 3.3-3.4): gradient error against beta and against gamma.

Layered Hopfield energy on ``mlp([784, 64, 10])`` with sigmoid hidden units, squared-error loss,
one real MNIST batch (float64), several initialisations. Each estimate is compared with the
algorithm's own ``reference``: dL/dtheta at its free equilibrium (implicit differentiation).

- EP: one-sided (x_beta - x_bar) and centered (x_{+beta} - x_{-beta}) against beta;
  expected error O(beta) and O(beta^2).
- CHL: plain (difference of clamped and free weight gradients / gamma^(L-1)) and corrected
  (Millidge et al. 2022 Eq. 17: first-order term H dx only) against the feedback strength gamma; the output is
  fully clamped, so the error vanishes only as gamma -> 0.
Inference: ``steps`` steps of 0.5 with a relative-residual tolerance.
"""

from __future__ import annotations

import torch

from common import loglog_slope, mnist, parser, plt, rel_error, save_figure, save_json, setup

import pl_energy

SIZES = [784, 64, 10]


def sweep(name, values, key, fixed, seeds, x, y):
    rel = torch.zeros(seeds, len(values))
    for seed in range(seeds):
        torch.manual_seed(seed)
        net = pl_energy.mlp(SIZES, activation="sigmoid").double()
        for j, v in enumerate(values):
            alg = pl_energy.build_algorithm(name, **{key: v}, **fixed)
            reference = alg.reference(net, x, y, loss="mse")
            rel[seed, j] = rel_error(alg.gradients(net, x, y, loss="mse"), reference)
    mean = rel.mean(0).tolist()
    return {"values": values, "rel_error_mean": mean, "rel_error_std": rel.std(0).tolist() if seeds > 1 else None,
            "loglog_slope_small": loglog_slope(values[:3], mean[:3])}


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    out = setup(args)
    train_x, train_y, _, _ = mnist(args.data_dir)
    batch = 8 if args.quick else 32
    x, y = train_x[:batch].double(), train_y[:batch]
    seeds = 1 if args.quick else 5
    steps = 60 if args.quick else 800
    common = dict(solver="gd", steps=steps, step_size=0.5, tol=1e-13, trace=False)
    betas = [1e-3, 1e-2, 1e-1] if args.quick else [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
    gammas = [0.03, 0.1, 0.3] if args.quick else [0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 1.0]
    results = {"setup": {"sizes": SIZES, "activation": "sigmoid", "loss": "mse", "batch": batch,
                         "seeds": seeds, **common}}
    for centered in (False, True):
        name = f"ep_{'centered' if centered else 'one_sided'}"
        results[name] = sweep("ep", betas, "beta", {**common, "centered": centered}, seeds, x, y)
        print(name, results[name]["rel_error_mean"], results[name]["loglog_slope_small"], flush=True)
    for corrected in (False, True):
        name = f"chl_{'corrected' if corrected else 'plain'}"
        results[name] = sweep("chl", gammas, "gamma", {**common, "corrected": corrected}, seeds, x, y)
        print(name, results[name]["rel_error_mean"], results[name]["loglog_slope_small"], flush=True)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, style in (("ep_one_sided", "o-"), ("ep_centered", "s--")):
        r = results[name]
        axes[0].loglog(betas, r["rel_error_mean"], style,
                       label=f"{name} (slope {r['loglog_slope_small']:.2f})")
    axes[0].set(xlabel="beta", ylabel="||g - g_ref|| / ||g_ref||", title="EP: error vs beta")
    for name, style in (("chl_plain", "o-"), ("chl_corrected", "s--")):
        r = results[name]
        axes[1].loglog(gammas, r["rel_error_mean"], style,
                       label=f"{name} (slope {r['loglog_slope_small']:.2f})")
    axes[1].set(xlabel="gamma (feedback strength)", ylabel="||g - g_ref|| / ||g_ref||",
                title="CHL: error vs gamma")
    for ax in axes:
        ax.legend(fontsize=8)
    save_figure(fig, out, "ep_chl")
    save_json(out, "ep_chl", results)
    return results


if __name__ == "__main__":
    main()
