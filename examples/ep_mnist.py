"""EP and CHL trained on MNIST beside BP: accuracy per epoch and time, MLP or CNN.

One initialisation, one batch order (batch 64, Adam at ``--lr``, cosine-annealed to 0 over the
run), for BP (the feedforward net) and for EP and CHL on the layered Hopfield energy with their
defaults (``clip`` units, min(max(x, 0), 1); every phase relaxed to a relative residual of 1e-6
by over-relaxed even/odd sweeps, step 1.3; EP centered, Laborieux et al. 2021: nudges +beta and
-beta, error O(beta^2), beta = 0.5; CHL gamma = 0.1). The Hopfield networks predict with their
free equilibrium. Every ``AGREEMENT_EVERY`` batches the update's cosine with its exact reference
(implicit differentiation at the free equilibrium) is recorded.

- ``--network mlp``: 784-512-10, Scellier & Bengio 2017's one hidden layer (BP with ReLU).
- ``--network conv``: 1x28x28 -> conv 5x5 (16), max-pool 2 -> conv 5x5 (32), max-pool 2 ->
  linear 512 -> 10: Ernoult et al. 2019's small MNIST ConvNet (BP with the same clip units).

Reported per epoch: validation accuracy (10,000 images held out of the training set) and wall
time; at the end, test accuracy and the fraction of inference phases that converged.

    python examples/ep_mnist.py --epochs 10 --out docs/results
    python examples/ep_mnist.py --network conv --algorithms bp ep --epochs 3 --out docs/results
"""

from __future__ import annotations

import torch
from torch import nn

from common import mnist_splits, parser, plt, save_figure, save_json, setup, train

import pl_energy
from pl_energy.core.activations import Clip

ALGORITHMS = ("bp", "ep", "chl")
AGREEMENT_EVERY = 100  # batches between cosines of the update with its exact reference


def network_for(kind: str, name: str, quick: bool) -> nn.Sequential:
    if kind == "mlp":
        return pl_energy.mlp([784, 16 if quick else 512, 10], activation="relu" if name == "bp" else "clip")
    width = (4, 8) if quick else (16, 32)
    return nn.Sequential(nn.Sequential(nn.Conv2d(1, width[0], 5), nn.MaxPool2d(2), Clip()),
                         nn.Sequential(nn.Conv2d(width[0], width[1], 5), nn.MaxPool2d(2), Clip()),
                         nn.Sequential(nn.Flatten(), nn.Linear(16 * width[1], 10)))


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--network", choices=("mlp", "conv"), default="mlp")
    p.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    args = p.parse_args(argv)
    out = setup(args)
    data = mnist_splits(args.data_dir, args.quick, images=args.network == "conv")
    batches = 20 if args.quick else None
    epochs = 1 if args.quick else args.epochs
    results = {"setup": {"network": repr(network_for(args.network, "ep", args.quick)), "optimizer": "Adam, cosine-annealed",
                         "lr": args.lr, "batch": 64, "epochs": epochs, "batches_per_epoch": batches}}
    for name in args.algorithms:
        torch.manual_seed(0)
        network = network_for(args.network, name, args.quick)
        results[name] = train(pl_energy.build_algorithm(name), network, data, epochs, args.lr, batches,
                              AGREEMENT_EVERY)
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for name in args.algorithms:
        rows = results[name]
        axis.plot(range(1, epochs + 1), rows["val_accuracy"], marker="o",
                  label=f"{name} (test {rows['test_accuracy']:.3f})")
    axis.set(xlabel="epoch", ylabel="validation accuracy", title=f"EP and CHL beside BP on MNIST ({args.network})")
    axis.legend()
    stem = "ep_mnist" if args.network == "mlp" else "ep_mnist_conv"
    save_figure(figure, out, stem)
    save_json(out, stem, results)
    return results


if __name__ == "__main__":
    main()
