"""Millidge et al. 2022 Fig. 3A: PC-Nudge's distance to BP against lam at initialisation (one-sided, centered).

``mlp([784, 128, 64, 10])``, ReLU, softmax cross-entropy, one real MNIST batch of 64, 20
initialisations. Two inference settings:

- ``steps50``: the paper's 50 steps of 0.1 (float32), as in A.1.2;
- ``converged``: 400 steps of 0.3 (float64); the nudged equilibrium is reached (the change from
  300 to 600 steps is below 1e-12 at lam = 1e-3). 5 initialisations by default (CPU budget).

Reported: the Euclidean distance ||g - g_BP|| (paper's y-axis) and the relative error
||g - g_BP|| / ||g_BP||, mean +- std over initialisations, and their slopes against lam: in
log-log (1 = linear, 2 = quadratic) and a linear least-squares fit over lam <= 0.1.
"""

from __future__ import annotations

import torch

from common import (distance, linear_fit, loglog_slope, mnist, parser, plt, rel_error, save_figure,
                    save_json, setup)

import pl_energy

SIZES = [784, 128, 64, 10]
SETTINGS = {"steps50": dict(steps=50, step_size=0.1, dtype=torch.float32),
            "converged": dict(steps=400, step_size=0.3, dtype=torch.float64)}


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=None, help="default 20 (quick 1)")
    p.add_argument("--converged-seeds", type=int, default=5,
                   help="initialisations of the converged (400-step, float64) setting")
    args = p.parse_args(argv)
    out = setup(args)
    train_x, train_y, _, _ = mnist(args.data_dir)
    x, y = train_x[:64], train_y[:64]
    seeds = args.seeds or (1 if args.quick else 20)
    lams = [1e-3, 1e-1] if args.quick else [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
    results = {"setup": {"sizes": SIZES, "batch": 64, "seeds": seeds, "lams": lams,
                         "settings": {k: {**v, "dtype": str(v["dtype"])} for k, v in SETTINGS.items()}}}
    bp = pl_energy.build_algorithm("bp")
    for key, setting in SETTINGS.items():
        dtype = setting["dtype"]
        steps = 30 if args.quick else setting["steps"]
        n_seeds = seeds if key == "steps50" or args.quick else min(seeds, args.converged_seeds)
        for centered in (False, True):
            name = f"{key}_{'centered' if centered else 'one_sided'}"
            dist = torch.zeros(n_seeds, len(lams))
            rel = torch.zeros(n_seeds, len(lams))
            for seed in range(n_seeds):
                torch.manual_seed(seed)
                net = pl_energy.mlp(SIZES).to(dtype)
                xs = x.to(dtype)
                reference = bp.gradients(net, xs, y)
                for j, lam in enumerate(lams):
                    alg = pl_energy.build_algorithm("pc_nudge", solver="gd", tol=None, lam=lam,
                                                    steps=steps,
                                                    step_size=setting["step_size"],
                                                    centered=centered, trace=False)
                    g = alg.gradients(net, xs, y)
                    dist[seed, j] = distance(g, reference)
                    rel[seed, j] = rel_error(g, reference)
            small = [j for j, lam in enumerate(lams) if lam <= 0.1]
            mean_rel = rel.double().mean(0).tolist()
            mean_dist = dist.double().mean(0).tolist()
            a, b, r2 = linear_fit([lams[j] for j in small], [mean_dist[j] for j in small])
            results[name] = {
                "seeds": n_seeds, "steps": steps,
                "distance_mean": mean_dist, "distance_std": dist.double().std(0, correction=int(n_seeds > 1)).tolist(),
                "rel_error_mean": mean_rel, "rel_error_std": rel.double().std(0, correction=int(n_seeds > 1)).tolist(),
                "loglog_slope_small_lam": loglog_slope([lams[j] for j in small],
                                                       [mean_rel[j] for j in small]),
                "linear_fit_small_lam": {"slope": a, "intercept": b, "r2": r2},
            }
            print(name, "rel error", [f"{v:.2e}" for v in mean_rel],
                  "loglog slope", f"{results[name]['loglog_slope_small_lam']:.3f}",
                  "linear fit", f"a={a:.3g} b={b:.3g} r2={r2:.4f}", flush=True)

    # ReLU kinks: units crossing 0 between the -lam and +lam equilibria leave an O(lam) residual
    # that centering cannot cancel; a smooth (tanh) net shows the O(lam^2) of centered nudging.
    tanh_seeds, tanh_lams = (1, [1e-2]) if args.quick else (5, [1e-3, 1e-2, 1e-1])
    tanh = {"lams": tanh_lams, "seeds": tanh_seeds}
    for centered in (False, True):
        rel = torch.zeros(tanh_seeds, len(tanh_lams))
        for seed in range(tanh_seeds):
            torch.manual_seed(seed)
            net = pl_energy.mlp(SIZES, activation="tanh").double()
            reference = bp.gradients(net, x.double(), y)
            for j, lam in enumerate(tanh_lams):
                alg = pl_energy.build_algorithm("pc_nudge", solver="gd", tol=None, lam=lam,
                                                steps=30 if args.quick else 400,
                                                step_size=0.3, centered=centered, trace=False)
                rel[seed, j] = rel_error(alg.gradients(net, x.double(), y), reference)
        kind = "centered" if centered else "one_sided"
        tanh[kind] = {"rel_error_mean": rel.double().mean(0).tolist()}
        if len(tanh_lams) > 1:
            tanh[kind]["loglog_slope"] = loglog_slope(tanh_lams, tanh[kind]["rel_error_mean"])
        print("tanh converged", kind, tanh[kind], flush=True)
    results["converged_tanh"] = tanh

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    styles = {"one_sided": "o-", "centered": "s--"}
    for key, color in (("steps50", "C1"), ("converged", "C0")):
        for kind, style in styles.items():
            r = results[f"{key}_{kind}"]
            m, s = torch.tensor(r["distance_mean"]), torch.tensor(r["distance_std"])
            axes[0].plot(lams, m, style, color=color, label=f"{key} {kind}")
            axes[0].fill_between(lams, m - s, m + s, color=color, alpha=0.2)
            m, s = torch.tensor(r["rel_error_mean"]), torch.tensor(r["rel_error_std"])
            axes[1].loglog(lams, m, style, color=color, label=f"{key} {kind}")
            axes[1].fill_between(lams, (m - s).clamp(min=1e-12), m + s, color=color, alpha=0.2)
    axes[0].set(xlabel="lam", ylabel="||g_PC-Nudge - g_BP||", title="3A: distance to BP (linear axes)")
    for kind, style in styles.items():
        axes[1].loglog(tanh_lams, tanh[kind]["rel_error_mean"], style, color="C2",
                       label=f"converged {kind}, tanh net")
    axes[1].set(xlabel="lam", ylabel="||g - g_BP|| / ||g_BP||", title="3A: relative error (log-log)")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    r = results["steps50_one_sided"]
    small = [j for j, lam in enumerate(lams) if lam <= 0.1]
    axes[2].plot([lams[j] for j in small], [r["distance_mean"][j] for j in small], "o", color="C1",
                 label="50 steps")
    c = results["converged_one_sided"]
    axes[2].plot([lams[j] for j in small], [c["distance_mean"][j] for j in small], "o", color="C0",
                 label="converged")
    for rr, color in ((r, "C1"), (c, "C0")):
        fit = rr["linear_fit_small_lam"]
        xs = torch.linspace(0, 0.1, 20)
        axes[2].plot(xs, fit["slope"] * xs + fit["intercept"], color=color, lw=0.8,
                     label=f"fit {fit['slope']:.3g} lam + {fit['intercept']:.3g}")
    axes[2].set(xlabel="lam", ylabel="||g - g_BP||", title="3A: linear fit, one-sided, lam <= 0.1")
    axes[2].legend(fontsize=8)
    save_figure(fig, out, "fig3a_lambda")
    save_json(out, "fig3a_lambda", results)
    return results


if __name__ == "__main__":
    main()
