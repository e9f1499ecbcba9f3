"""Song et al. 2020 supplement Fig. 3: test error of IL updating all weights at inference moment t, per gamma.

PC networks with l_max = 2, 3, 4 weight layers (``mlp([784] + [64] * (l_max - 1) + [10])``, ReLU,
output clamped to the one-hot target = squared error, lam = 1), inference from the feedforward
pass (C1) with rate gamma. "t = k": Alg. 1, all weights updated once after k inference steps
(the ``pc`` algorithm with steps=k, step_size=gamma). "t = l": Z-IL (Alg. 2), layer k below the
output updated at t = k (the ``z_il`` algorithm with that gamma; with gamma = 1 it is BP). Plotted,
as in Song et al. 2020 (A.8), with "l" between t = l_max - 2 and t = l_max - 1. Each cell is one short
MNIST training run (plain SGD, same init and data order), then the test error on the 10k test set.
"""

from __future__ import annotations

import copy

import torch

from common import mnist, parser, plt, save_figure, save_json, setup

import pl_energy


def run(algorithm, initial, batches, test, lr):
    net = copy.deepcopy(initial)
    params = dict(net.named_parameters())
    for x, y in batches:
        grads = algorithm.gradients(net, x, y, loss="mse")
        with torch.no_grad():
            for name, g in grads.items():
                params[name].sub_(lr * g)
        if not all(torch.isfinite(p).all() for p in net.parameters()):
            return float("nan")
    with torch.no_grad():
        return float((net(test[0]).argmax(1) != test[1]).float().mean())


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args(argv)
    out = setup(args)
    train_x, train_y, test_x, test_y = mnist(args.data_dir)
    n = 256 if args.quick else 10000
    batches = list(zip(train_x[:n].split(32), train_y[:n].split(32)))
    test = (test_x[:1000], test_y[:1000]) if args.quick else (test_x, test_y)
    lmaxes = [2] if args.quick else [2, 3, 4]
    gammas = [0.5, 1.0] if args.quick else [0.1, 0.5, 1.0]
    results = {"setup": {"hidden": 64, "examples": n, "batch": 32, "lr": args.lr, "loss": "mse",
                         "gammas": gammas}}
    fig, axes = plt.subplots(1, len(lmaxes), figsize=(5 * len(lmaxes), 4), squeeze=False)
    for ax, lmax in zip(axes[0], lmaxes):
        torch.manual_seed(lmax)
        initial = pl_energy.mlp([784] + [64] * (lmax - 1) + [10])
        ts = list(range(0, lmax + 2))
        labels = [str(t) for t in ts[:lmax - 1]] + ["l"] + [str(t) for t in ts[lmax - 1:]]
        bp_error = run(pl_energy.build_algorithm("bp"), initial, batches, test, args.lr)
        table = {}
        for gamma in gammas:
            row = []
            for label in labels:
                if label == "l":
                    alg = pl_energy.build_algorithm("z_il", inference_rate=gamma)
                else:
                    alg = pl_energy.build_algorithm("pc", solver="gd", tol=None, steps=int(label), step_size=gamma, lam=1.0,
                                                    trace=False)
                row.append(run(alg, initial, batches, test, args.lr))
            table[str(gamma)] = row
            print(f"l_max={lmax} gamma={gamma}", dict(zip(labels, [round(v, 4) for v in row])),
                  flush=True)
            ax.plot(range(len(labels)), row, "o-", label=f"gamma={gamma}")
        ax.axhline(bp_error, color="k", ls=":", label=f"BP ({bp_error:.4f})")
        ax.set_xticks(range(len(labels)), labels)
        ax.set(xlabel="inference moment t of the weight update", ylabel="test error",
               title=f"l_max = {lmax}")
        ax.legend(fontsize=8)
        results[f"lmax{lmax}"] = {"t": labels, "test_error": table, "bp_test_error": bp_error}
    save_figure(fig, out, "zil_t_gamma")
    save_json(out, "zil_t_gamma", results)
    return results


if __name__ == "__main__":
    main()
