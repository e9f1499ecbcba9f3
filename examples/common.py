"""Shared helpers of the figure scripts: arguments, real MNIST, gradient metrics, outputs.

Every script is ``python examples/<name>.py --out docs/results [--quick] [--data-dir DIR]`` and
exposes ``main(argv) -> dict`` (the JSON it writes), which the smoke tests call in-process.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from pl_energy.metrics import gradient_agreement  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402,F401  (re-exported)

_MNIST_CACHE: dict[str, tuple] = {}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=str(REPO / "docs" / "results"), help="output folder (PNG + JSON)")
    p.add_argument("--quick", action="store_true", help="smoke-run setting (seconds)")
    p.add_argument("--data-dir", default=None,
                   help="folder with MNIST/raw/*.gz (default $PL_ENERGY_DATA, else ../shared/data, "
                        "else ./data); read in place")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    return p


def setup(args) -> Path:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _mnist_dir(data_dir: str | None) -> str:
    """The first folder holding MNIST/raw/*.gz (MNISTDataModule reads them in place, writing
    nothing, so a shared or read-only folder serves as it is)."""
    from pl_energy.data.mnist import find_checkout_mnist

    found = find_checkout_mnist(REPO, data_dir)
    if found is None:
        where = data_dir or "$PL_ENERGY_DATA, ../shared/data or ./data"
        raise FileNotFoundError(f"MNIST raw files (MNIST/raw/*-ubyte.gz) not found in {where}; pass --data-dir")
    return str(found)


def mnist(data_dir: str | None = None):
    """Real MNIST as (train_x, train_y, test_x, test_y): the seeded 50k train split, 10k test."""
    from pl_energy.data import MNISTDataModule

    root = _mnist_dir(data_dir)
    if root not in _MNIST_CACHE:
        module = MNISTDataModule(data_dir=root, download=False)
        module.prepare_data()
        module.setup()
        _MNIST_CACHE[root] = (*module.train_set.tensors, *module.test_set.tensors)
    return _MNIST_CACHE[root]


# --- training ------------------------------------------------------------------------------------
def accuracy(algorithm, network, x, y, batch: int = 1000) -> float:
    """Accuracy of the algorithm's prediction (the feedforward pass, or the free equilibrium)."""
    with torch.no_grad():
        correct = sum(int((algorithm.predict(network, x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum())
                      for i in range(0, len(x), batch))
    return correct / len(x)


def train(algorithm, network, data, epochs: int, lr: float, batches: int | None,
          agreement_every: int = 100) -> dict:
    """Train ``network`` with ``algorithm`` (batch 64, Adam at ``lr`` cosine-annealed to 0, one
    seeded batch order, the same for every algorithm): validation accuracy and wall time per
    epoch, the update's cosine with its exact reference every ``agreement_every`` batches (its
    time counts in the epoch), test accuracy and the fraction of converged inference phases."""
    train_x, train_y, val_x, val_y, test_x, test_y = data
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    per_epoch = batches or -(-len(train_x) // 64)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * per_epoch)
    order = torch.Generator().manual_seed(0)
    rows = {"hparams": algorithm.hparams(), "val_accuracy": [], "seconds": [], "converged": [], "steps": [],
            "reference_cosine": []}
    start = time.time()
    for _ in range(epochs):
        permutation = torch.randperm(len(train_x), generator=order)
        for index, chunk in enumerate(permutation.split(64)):
            if batches is not None and index >= batches:
                break
            estimate = algorithm.estimate(network, train_x[chunk], train_y[chunk])
            if algorithm.name != "bp" and index % agreement_every == 0:
                reference = algorithm.reference(network, train_x[chunk], train_y[chunk])
                rows["reference_cosine"].append(cosine(estimate.gradients, reference))
            rows["converged"].append(estimate.converged)
            rows["steps"].append(sum(report.steps for report in estimate.inference))
            for key, parameter in network.named_parameters():
                parameter.grad = estimate.gradients[key]
            optimizer.step()
            schedule.step()
        rows["val_accuracy"].append(accuracy(algorithm, network, val_x, val_y))
        rows["seconds"].append(time.time() - start)
        print(algorithm.name, "epoch", len(rows["val_accuracy"]), "validation accuracy", rows["val_accuracy"][-1],
              f"{rows['seconds'][-1]:.0f} s", flush=True)
    rows["test_accuracy"] = accuracy(algorithm, network, test_x, test_y)
    rows["converged_fraction"] = sum(rows["converged"]) / max(len(rows["converged"]), 1)
    rows["mean_inference_steps"] = sum(rows["steps"]) / max(len(rows["steps"]), 1)
    del rows["converged"], rows["steps"]
    return rows


def mnist_splits(data_dir: str | None, quick: bool, images: bool = False):
    """(train_x, train_y, val_x, val_y, test_x, test_y): the seeded 50k train split, its last 10k
    held out for validation, and the 10k test images; ``images`` gives 1x28x28 tensors, ``quick``
    keeps 200 validation and test images."""
    train_x, train_y, test_x, test_y = mnist(data_dir)
    if images:
        train_x, test_x = train_x.reshape(-1, 1, 28, 28), test_x.reshape(-1, 1, 28, 28)
    val_x, val_y = train_x[-10_000:], train_y[-10_000:]
    train_x, train_y = train_x[:-10_000], train_y[:-10_000]
    if quick:
        val_x, val_y, test_x, test_y = val_x[:200], val_y[:200], test_x[:200], test_y[:200]
    return train_x, train_y, val_x, val_y, test_x, test_y


# --- gradient metrics ---------------------------------------------------------------------------
def flat(gradients: dict) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in gradients.values()])


def cosine(a: dict, b: dict) -> float:
    return gradient_agreement(a, b)["cosine"]


def rel_error(estimate: dict, reference: dict) -> float:
    """||estimate - reference|| / ||reference||, over all parameters."""
    return gradient_agreement(estimate, reference)["rel_error"]


def distance(a: dict, b: dict) -> float:
    """Euclidean distance over all parameters (Millidge et al. 2022 A.1.1)."""
    return float((flat(a).double() - flat(b).double()).norm())


def loglog_slope(xs, ys) -> float:
    """Least-squares slope of log10(y) against log10(x)."""
    lx = torch.tensor([math.log10(x) for x in xs], dtype=torch.float64)
    ly = torch.tensor([math.log10(y) for y in ys], dtype=torch.float64)
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())


def linear_fit(xs, ys) -> tuple[float, float, float]:
    """y = a x + b by least squares: (a, b, r^2)."""
    x = torch.tensor(list(xs), dtype=torch.float64)
    y = torch.tensor(list(ys), dtype=torch.float64)
    xm, ym = x.mean(), y.mean()
    a = ((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum()
    b = ym - a * xm
    r2 = 1 - ((y - a * x - b) ** 2).sum() / ((y - ym) ** 2).sum()
    return float(a), float(b), float(r2)


def clean(obj):
    """NaN/Inf -> None so that the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def save_json(out: Path, name: str, data: dict) -> Path:
    path = Path(out) / f"{name}.json"
    path.write_text(json.dumps(clean(data), indent=1))
    return path


def save_figure(fig, out: Path, name: str) -> Path:
    path = Path(out) / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
