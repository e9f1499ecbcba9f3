"""How an estimate's agreement with BP evolves along a training trajectory: its own, or BP's.

An O(lam) bias that is harmless at initialisation can grow with the weights the estimate itself
produces. This trains ResNet-18's stages at 1/8 width without BatchNorm (``ResNet``, 1x28x28
MNIST, batch 64, constant Adam at ``--lr``, one seeded batch order) and measures, every
``--every`` batches, the cosine and relative error of PC-Nudge's update against BP on the
training batch:

- ``pc_nudge``: one-sided PC-Nudge at the paper's lam = 0.01, trained on its own updates;
- ``pc_nudge_auto``: the default, lam chosen per batch (``lam="auto"``), trained on its own updates;
- ``pc_nudge_centered``: ``centered=True`` (error O(lam^2)), trained on its own updates;
- ``along_bp``: the network trained by BP, the one-sided estimate measured along the way.

A run stops when its loss exceeds 1e4 or is not finite (``diverged_at``).

    python examples/trajectory_agreement.py --threads 1
    python examples/trajectory_agreement.py --runs pc_nudge_centered --batches 300 --threads 1
"""

from __future__ import annotations

import math

import torch

from common import mnist_splits, parser, plt, save_figure, save_json, setup
from deep_mnist import network_for

import pl_energy
from pl_energy.metrics import gradient_agreement

RUNS = {"pc_nudge": {"lam": 0.01}, "pc_nudge_centered": {"centered": True, "lam": 0.01}, "along_bp": {"lam": 0.01},
        "pc_nudge_auto": {}}
DIVERGED = 1e4


def run(name: str, data, batches: int, every: int, lr: float, quick: bool) -> dict:
    train_x, train_y = data[0], data[1]
    torch.manual_seed(0)
    network = network_for("resnet", "pc_nudge", quick, "standard", batch_norm=False)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    algorithm = pl_energy.build_algorithm("pc_nudge", **RUNS[name])
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))
    rows = {"hparams": algorithm.hparams(), "batch": [], "cosine": [], "rel_error": [], "loss": [],
            "inference_steps": [], "diverged_at": None}
    for index in range(batches):
        chunk = order[index * 64:(index + 1) * 64]
        x, y = train_x[chunk], train_y[chunk]
        measured = index % every == 0
        estimate = algorithm.estimate(network, x, y) if name != "along_bp" or measured else None
        if measured:
            metrics = gradient_agreement(estimate.gradients, algorithm.reference(network, x, y))
            rows["batch"].append(index)
            rows["cosine"].append(metrics["cosine"])
            rows["rel_error"].append(metrics["rel_error"])
            rows["loss"].append(float(estimate.loss))
            rows["inference_steps"].append(sum(report.steps for report in estimate.inference))
            print(f"{name} batch {index}: cosine {metrics['cosine']:.4f}, relative error "
                  f"{metrics['rel_error']:.3f}, loss {float(estimate.loss):.3f}", flush=True)
        optimizer.zero_grad(set_to_none=True)
        if name == "along_bp":
            loss = torch.nn.functional.cross_entropy(network(x), y)
            loss.backward()
            loss = float(loss)
        else:
            for key, parameter in network.named_parameters():
                parameter.grad = estimate.gradients[key]
            loss = float(estimate.loss)
        if not math.isfinite(loss) or loss > DIVERGED:
            rows["diverged_at"] = index
            print(f"{name}: loss {loss:.3g} at batch {index}: diverged", flush=True)
            break
        optimizer.step()
    return rows


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", choices=tuple(RUNS), default=list(RUNS))
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args(argv)
    out = setup(args)
    batches, every = (6, 2) if args.quick else (args.batches, args.every)
    data = mnist_splits(args.data_dir, args.quick, images=True)
    results: dict = {"setup": {"network": "ResNet 8-16-32-64, (2, 2, 2, 2) blocks, no BatchNorm", "lr": args.lr,
                               "optimizer": "Adam (constant)", "batch": 64, "batches": batches, "every": every}}
    for name in args.runs:
        results[name] = run(name, data, batches, every, args.lr, args.quick)
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name in args.runs:
        axes[0].plot(results[name]["batch"], results[name]["cosine"], marker="o", label=name)
        axes[1].semilogy(results[name]["batch"], results[name]["rel_error"], marker="o", label=name)
    axes[0].set(xlabel="batch", ylabel="cosine with BP")
    axes[1].set(xlabel="batch", ylabel="relative error")
    axes[0].legend()
    figure.suptitle("PC-Nudge against BP along a training trajectory (ResNet without BatchNorm)")
    suffix = "" if args.runs == list(RUNS) else "_" + "_".join(args.runs)
    save_figure(figure, out, "trajectory_agreement" + suffix)
    save_json(out, "trajectory_agreement" + suffix, results)
    return results


if __name__ == "__main__":
    main()
