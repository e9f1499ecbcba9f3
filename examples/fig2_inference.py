"""Millidge et al. 2022 Fig. 2: energies during inference (A), activity change vs BP (B), error vs distance (C).

PC network ``mlp([784, 128, 64, 10])``, ReLU, softmax cross-entropy, PyTorch default init, real
MNIST, inference started at the free phase (the feedforward pass), 50 steps of 0.1 (A.1).

A. Internal energy I (sum of squared hidden prediction errors), supervised loss L and total
   E = I + L (lam = 1) per step, one batch of 64.
B. For each hidden layer l and step t, the per-step activity change v_l(t) = x_l(t) - x_l(t-1)
   against the BP adjoint -dl/dx_l (per-sample loss, at the feedforward pass), both normalised
   to unit length over the batch: d_l(t) = || v/||v|| + g/||g|| || = sqrt(2 - 2 cos) in [0, 2].
   Normalising is needed because with step s < 1 layer l's first move is s^k times BP's adjoint
   (Song et al. 2020 A.5), k layers below the output. 0 means the activities move exactly along -grad
   BP. Layer l first moves at step L-l (x_{L-1} at t=1, x_{L-2} at t=2; undefined before); that
   first move is exactly BP's direction, and the distance grows as inference goes on. Mean +- std over 10 initialisations, lam = 1 (PC-Nudge with lam=1).
C. One MNIST image, 10 initialisations, PC-Nudge with lam swept: Euclidean distance between free
   and clamped (nudged) equilibria (all hidden activities and the output prediction, summed over
   layers, unnormalised as in A.1.1) against the Euclidean distance between PC-Nudge's and BP's
   gradients (all weights and biases). Inference: 50 steps of 0.1 (paper) and converged
   (float64, 1000 steps of 0.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common import distance, loglog_slope, mnist, parser, plt, save_figure, save_json, setup

import pl_energy
from pl_energy.core import PredictiveCodingEnergy, relax
from pl_energy.core.losses import Loss

SIZES = [784, 128, 64, 10]


def bp_adjoints(network, x, y):
    """dl/dx_l for the per-sample loss, hidden layers l = 1..L-1, at the feedforward pass."""
    layers = list(network.children())
    activities, h = [], x
    with torch.enable_grad():
        for layer in layers[:-1]:
            h = layer(h)
            activities.append(h)
        loss = F.cross_entropy(layers[-1](h), y, reduction="sum")
        return list(torch.autograd.grad(loss, activities))


def panel_b(network, x, y, steps, step_size):
    energy = PredictiveCodingEnergy(network, Loss("cross_entropy"))
    state = energy.nudged(energy.free_state(x, y), 1.0)
    adjoints = bp_adjoints(network, x, y)
    rows = {f"x{l}": [] for l in range(1, len(adjoints) + 1)}
    for _ in range(steps):
        before = list(state.activities[1:])
        energy.move_activities(state, energy.activity_gradients(state), step_size)
        for l, (a, b, g) in enumerate(zip(state.activities[1:], before, adjoints), start=1):
            move = (a - b).double()
            if float(move.norm()) == 0.0:
                rows[f"x{l}"].append(float("nan"))  # layer not reached yet
                continue
            target = -g.double()
            rows[f"x{l}"].append(float((move / move.norm() - target / target.norm()).norm()))
    return rows


def panel_c(network, x, y, lams, steps, step_size):
    bp = pl_energy.build_algorithm("bp").gradients(network, x, y)
    eq, gd = [], []
    for lam in lams:
        energy = PredictiveCodingEnergy(network, Loss("cross_entropy"))
        state = energy.nudged(energy.free_state(x, y), lam)
        free = list(state.activities[1:]) + [state.output]
        relax(energy, state, steps, step_size)
        clamped = list(state.activities[1:]) + [state.output]
        eq.append(sum(float((a - b).pow(2).sum()) for a, b in zip(clamped, free)) ** 0.5)
        grads = [g / lam for layer in energy.parameter_gradients(state) for g in layer]
        names = [n for n, _ in network.named_parameters()]
        gd.append(distance(dict(zip(names, grads)), bp))
    return eq, gd


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    out = setup(args)
    train_x, train_y, _, _ = mnist(args.data_dir)
    x, y = train_x[:64], train_y[:64]
    inits = 2 if args.quick else 10
    steps, step_size = 50, 0.1
    results = {"setup": {"sizes": SIZES, "steps": steps, "step_size": step_size, "inits": inits}}

    # A
    torch.manual_seed(0)
    net = pl_energy.mlp(SIZES)
    alg = pl_energy.build_algorithm("pc_nudge", lam=1.0, solver="gd", tol=None, steps=steps,
                                     step_size=step_size, trace=True)
    trace = alg.estimate(net, x, y).trace
    results["A"] = trace.as_dict()
    slope_total = float(trace.total[1] - trace.total[0])
    slope_loss = float(trace.supervised[1] - trace.supervised[0])
    results["A"]["first_step_change"] = {"total": slope_total, "supervised": slope_loss,
                                         "internal": float(trace.internal[1] - trace.internal[0])}

    # B
    runs = []
    for seed in range(inits):
        torch.manual_seed(seed)
        runs.append(panel_b(pl_energy.mlp(SIZES), x, y, steps, step_size))
    results["B"] = {}
    for key in runs[0]:
        t = torch.tensor([r[key] for r in runs])
        results["B"][key] = {"mean": t.mean(0).tolist(),
                             "std": t.std(0).tolist() if inits > 1 else [0.0] * steps}

    # C
    lams = [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0] if not args.quick else [1e-3, 1e-2, 0.1, 1.0]
    xc, yc = train_x[7:8].double(), train_y[7:8]
    results["C"] = {"lams": lams, "steps50": [], "converged": []}
    for seed in range(inits):
        torch.manual_seed(seed)
        net = pl_energy.mlp(SIZES).double()
        settings = {"steps50": (steps, step_size), "converged": (200 if args.quick else 1000, 0.2)}
        for key, (st, ss) in settings.items():
            eq, gd = panel_c(net, xc, yc, lams, st, ss)
            results["C"][key].append({"equilibrium_distance": eq, "gradient_distance": gd,
                                      "loglog_slope": loglog_slope(eq[:4], gd[:4])})
    for key in ("steps50", "converged"):
        s = [r["loglog_slope"] for r in results["C"][key]]
        results["C"][f"{key}_loglog_slope_small_lam_mean"] = sum(s) / len(s)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.plot(trace.internal, label="internal energy I")
    ax.plot(trace.supervised, label="supervised loss L")
    ax.plot(trace.total, label="total E = I + L")
    ax.set(xlabel="inference step", ylabel="energy (batch mean)", title="2A: energies from the free phase")
    ax.legend()
    ax = axes[1]
    t = range(1, steps + 1)
    for key, row in results["B"].items():
        m, s = torch.tensor(row["mean"]), torch.tensor(row["std"])
        ax.plot(t, m, label=key)
        ax.fill_between(t, m - s, m + s, alpha=0.25)
    ax.set(xlabel="inference step t", ylabel="|| dx/|dx| + g/|g| ||  (g = dl/dx, BP)",
           title="2B: activity change vs BP (mean +- std, 10 inits)")
    ax.set_yscale("symlog", linthresh=1e-6)
    ax.legend()
    ax = axes[2]
    for i, r in enumerate(results["C"]["converged"]):
        ax.loglog(r["equilibrium_distance"], r["gradient_distance"], "o-", ms=3, color="C0",
                  alpha=0.6, label="converged" if i == 0 else None)
    for i, r in enumerate(results["C"]["steps50"]):
        ax.loglog(r["equilibrium_distance"], r["gradient_distance"], "s--", ms=3, color="C1",
                  alpha=0.6, label="50 steps" if i == 0 else None)
    ax.set(xlabel="||clamped - free equilibrium||", ylabel="||g_PC-Nudge - g_BP||",
           title="2C: gradient error vs equilibrium distance (lam swept)")
    ax.legend()
    save_figure(fig, out, "fig2_inference")
    save_json(out, "fig2_inference", results)
    print("2A first-step change", results["A"]["first_step_change"])
    print("2B first-move distances", {k: v["mean"][:3] for k, v in results["B"].items()})
    print("2C slopes", results["C"]["steps50_loglog_slope_small_lam_mean"],
          results["C"]["converged_loglog_slope_small_lam_mean"])
    return results


if __name__ == "__main__":
    main()
