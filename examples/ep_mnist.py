"""EP and CHL trained on MNIST with their defaults, beside BP: accuracy per epoch and time.

Seed 003's MLP 784-128-64-10 trained from one initialisation with one batch order (batch 64,
SGD with momentum 0.9, ``--lr``) by BP (ReLU, the feedforward net) and by EP and CHL on the
layered Hopfield energy with their default settings (``clip`` units, every phase converged to a
relative residual of 1e-6: EP by nesterov, CHL by even/odd sweeps, EP's beta = 0.05). The
Hopfield networks predict with their free equilibrium. Reported per epoch: validation accuracy
(10,000 images held out of the training set) and wall time; at the end, test accuracy and the
fraction of inference phases that converged.

    python examples/ep_mnist.py --epochs 5 --out docs/results
"""

from __future__ import annotations

import time

import torch

from common import mnist, parser, plt, save_figure, save_json, setup

import pl_energy

ACTIVATIONS = {"bp": "relu", "ep": "clip", "chl": "clip"}


def accuracy(algorithm, network, x, y, batch: int = 1000) -> float:
    with torch.no_grad():
        correct = sum(int((algorithm.predict(network, x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum())
                      for i in range(0, len(x), batch))
    return correct / len(x)


def train(name: str, data, epochs: int, lr: float, batches: int | None) -> dict:
    train_x, train_y, val_x, val_y, test_x, test_y = data
    torch.manual_seed(0)
    network = pl_energy.mlp([784, 128, 64, 10], activation=ACTIVATIONS[name])
    algorithm = pl_energy.build_algorithm(name)
    optimizer = torch.optim.SGD(network.parameters(), lr=lr, momentum=0.9)
    order = torch.Generator().manual_seed(0)
    rows = {"val_accuracy": [], "seconds": [], "converged": [], "steps": []}
    start = time.time()
    for _ in range(epochs):
        permutation = torch.randperm(len(train_x), generator=order)
        for index, chunk in enumerate(permutation.split(64)):
            if batches is not None and index >= batches:
                break
            estimate = algorithm.step(network, train_x[chunk], train_y[chunk])
            rows["converged"].append(estimate.converged)
            rows["steps"].append(sum(report.steps for report in estimate.inference))
            for key, parameter in network.named_parameters():
                parameter.grad = estimate.gradients[key]
            optimizer.step()
        rows["val_accuracy"].append(accuracy(algorithm, network, val_x, val_y))
        rows["seconds"].append(time.time() - start)
        print(name, "epoch", len(rows["val_accuracy"]), "validation accuracy", rows["val_accuracy"][-1],
              f"{rows['seconds'][-1]:.0f} s", flush=True)
    rows["test_accuracy"] = accuracy(algorithm, network, test_x, test_y)
    rows["converged_fraction"] = sum(rows["converged"]) / max(len(rows["converged"]), 1)
    rows["mean_inference_steps"] = sum(rows["steps"]) / max(len(rows["steps"]), 1)
    del rows["converged"], rows["steps"]
    return rows


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.001)
    args = p.parse_args(argv)
    out = setup(args)
    train_x, train_y, test_x, test_y = mnist(args.data_dir)
    val_x, val_y = train_x[-10_000:], train_y[-10_000:]
    train_x, train_y = train_x[:-10_000], train_y[:-10_000]
    batches = 20 if args.quick else None
    if args.quick:
        val_x, val_y, test_x, test_y = val_x[:500], val_y[:500], test_x[:500], test_y[:500]
    epochs = 1 if args.quick else args.epochs
    data = (train_x, train_y, val_x, val_y, test_x, test_y)
    results = {"setup": {"sizes": [784, 128, 64, 10], "activations": ACTIVATIONS, "lr": args.lr,
                         "momentum": 0.9, "batch": 64, "epochs": epochs, "batches_per_epoch": batches}}
    for name in ("bp", "ep", "chl"):
        results[name] = train(name, data, epochs, args.lr, batches)
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for name in ("bp", "ep", "chl"):
        rows = results[name]
        axis.plot(range(1, epochs + 1), rows["val_accuracy"], marker="o",
                  label=f"{name} (test {rows['test_accuracy']:.3f})")
    axis.set(xlabel="epoch", ylabel="validation accuracy", title="EP and CHL beside BP on MNIST")
    axis.legend()
    save_figure(figure, out, "ep_mnist")
    save_json(out, "ep_mnist", results)
    return results


if __name__ == "__main__":
    main()
