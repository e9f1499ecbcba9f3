"""Millidge et al. 2022 Fig. 3B and 3C: PC-Nudge trains like BP; cosine (and relative error) of its updates.

BP and PC-Nudge (lam = 0.01, 50 inference steps, step 0.1 as in A.1, and step 0.3 as in the
paper's public code) train ``mlp([784, 128, 64, 10])`` (ReLU, softmax cross-entropy) on real
MNIST from the same initialisation with the same batch order: SGD, lr 0.001, momentum 0.9,
batch 64, one epoch. pl_energy's estimates are already in BP units ((1/lam) dE/dtheta), so
lr 0.001 on them is the paper's lr 0.001/lam on dE/dtheta.

Per batch: training accuracy on the batch (before the update), and for PC-Nudge the cosine and
relative error ||g - g_BP|| / ||g_BP|| against BP's gradient at PC-Nudge's own weights
(unclipped; the paper's Fig. 3C axis is clipped to [0.9985, 1]).
"""

from __future__ import annotations

import copy
import time

import torch

from common import cosine, mnist, parser, plt, rel_error, save_figure, save_json, setup

import pl_energy


def train(algorithm, network, batches, test, lr=1e-3, momentum=0.9):
    bp = pl_energy.build_algorithm("bp")
    optimizer = torch.optim.SGD(network.parameters(), lr=lr, momentum=momentum)
    rows = {"accuracy": [], "cosine": [], "rel_error": []}
    params = dict(network.named_parameters())
    for x, y in batches:
        estimate = algorithm.estimate(network, x, y)
        rows["accuracy"].append(float((estimate.output.argmax(1) == y).float().mean()))
        if algorithm.name != "bp":
            reference = bp.gradients(network, x, y)
            rows["cosine"].append(cosine(estimate.gradients, reference))
            rows["rel_error"].append(rel_error(estimate.gradients, reference))
        for name, g in estimate.gradients.items():
            params[name].grad = g
        optimizer.step()
    with torch.no_grad():
        rows["test_accuracy"] = float((network(test[0]).argmax(1) == test[1]).float().mean())
    return rows


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--lam", type=float, default=0.01)
    p.add_argument("--batches", type=int, default=None, help="default: one epoch (quick: 8)")
    args = p.parse_args(argv)
    out = setup(args)
    train_x, train_y, test_x, test_y = mnist(args.data_dir)
    torch.manual_seed(0)
    order = torch.randperm(len(train_x))
    batches = [(train_x[i], train_y[i]) for i in order.split(64)]
    count = args.batches or (8 if args.quick else len(batches))
    batches = batches[:count]
    test = (test_x[:1000], test_y[:1000]) if args.quick else (test_x, test_y)
    torch.manual_seed(1)
    initial = pl_energy.mlp([784, 128, 64, 10])
    runs = {
        "bp": pl_energy.build_algorithm("bp"),
        "pc_nudge_step0.1": pl_energy.build_algorithm("pc_nudge", solver="gd", tol=None, lam=args.lam, steps=50,
                                                      step_size=0.1, trace=False),
        "pc_nudge_step0.3": pl_energy.build_algorithm("pc_nudge", solver="gd", tol=None, lam=args.lam, steps=50,
                                                      step_size=0.3, trace=False),
    }
    results = {"setup": {"sizes": [784, 128, 64, 10], "lam": args.lam, "steps": 50, "lr": 1e-3,
                         "momentum": 0.9, "batch": 64, "batches": count}}
    for name, algorithm in runs.items():
        start = time.time()
        rows = train(algorithm, copy.deepcopy(initial), batches, test)
        rows["seconds"] = time.time() - start
        if rows["cosine"]:
            rows["summary"] = {"cosine_min": min(rows["cosine"]),
                               "cosine_mean": sum(rows["cosine"]) / len(rows["cosine"]),
                               "rel_error_min": min(rows["rel_error"]),
                               "rel_error_mean": sum(rows["rel_error"]) / len(rows["rel_error"]),
                               "rel_error_max": max(rows["rel_error"])}
        results[name] = rows
        print(name, "test accuracy", rows["test_accuracy"], rows.get("summary"), flush=True)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    smooth = max(1, count // 50)

    def smoothed(values):
        t = torch.tensor(values)
        if smooth == 1:
            return t
        return torch.nn.functional.avg_pool1d(t[None, None], smooth, 1).flatten()

    for name in runs:
        axes[0].plot(smoothed(results[name]["accuracy"]),
                     label=f"{name} (test {results[name]['test_accuracy']:.3f})", lw=1)
    axes[0].set(xlabel="batch", ylabel=f"training accuracy (running mean of {smooth})",
                title="3B: batch-by-batch training accuracy")
    axes[0].legend()
    for name in list(runs)[1:]:
        axes[1].plot(results[name]["cosine"], label=name, lw=0.8)
        axes[2].semilogy(results[name]["rel_error"], label=name, lw=0.8)
    axes[1].set(xlabel="batch", ylabel="cosine(PC-Nudge, BP)", title="3C: cosine similarity (unclipped)")
    axes[2].set(xlabel="batch", ylabel="||g - g_BP|| / ||g_BP||", title="3C': relative error")
    axes[1].legend()
    axes[2].legend()
    save_figure(fig, out, "fig3bc_pc_nudge_training")
    save_json(out, "fig3bc_pc_nudge_training", results)
    return results


if __name__ == "__main__":
    main()
