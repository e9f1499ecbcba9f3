"""The networks and batches a step benchmark runs on (cases a-f)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pl_energy import mlp
from pl_energy.core.activations import ACTIVATIONS
from pl_energy.core.networks import VGG
from pl_energy.core.residual import ResidualMLP
from pl_energy.data.loading import seeded_split
from pl_energy.data.mnist import MNIST_FILES, TRAIN_TOTAL, find_checkout_mnist, read_idx

REPO = Path(__file__).resolve().parents[2]


def cnn(quick: bool = False, activation: str = "relu") -> nn.Sequential:
    """The small MNIST CNN of case (c): each top-level child is one layer of the energy model.

    Pooling before the activation (the same function for non-decreasing units: max-pooling
    commutes with them) puts the activation at the end of each block, as a Hopfield layer needs."""
    unit = ACTIVATIONS[activation]
    if quick:  # 1x12x12 inputs
        return nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), unit()),
            nn.Sequential(nn.Conv2d(2, 4, 3), nn.MaxPool2d(2), unit()),
            nn.Sequential(nn.Flatten(), nn.Linear(4, 8), unit()),
            nn.Linear(8, 10),
        )
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 8, 5), nn.MaxPool2d(2), unit()),
        nn.Sequential(nn.Conv2d(8, 16, 5), nn.MaxPool2d(2), unit()),
        nn.Sequential(nn.Flatten(), nn.Linear(256, 64), unit()),
        nn.Linear(64, 10),
    )


NO_RESIDUAL_HOPFIELD = "n/a: a residual block is not a Hopfield coupling (ep and chl refuse it)"


@dataclass
class Case:
    key: str
    title: str
    build: Callable[[], nn.Module]
    batch: int
    input_shape: tuple[int, ...]
    classes: int
    data: str                 # "mnist" or "random"
    repeats: int
    warmup: int
    #: ep and chl run on this network (the same layers with bounded units, so the same MACs:
    #: a Hopfield energy of unbounded units is bounded below only while its couplings are weak);
    #: None: on ``build``'s network.
    hopfield_build: Callable[[], nn.Module] | None = None
    #: why ep and chl cannot run on this case ("" when they can).
    no_hopfield: str = ""

    def builder(self, hopfield: bool) -> Callable[[], nn.Module]:
        """What builds the network a variant runs on (``hopfield``: ep's and chl's)."""
        return self.hopfield_build if hopfield and self.hopfield_build is not None else self.build


def cases(quick: bool) -> dict[str, Case]:
    if quick:
        return {
            "a": Case("a", "quick: mlp([32, 16, 8, 10]), batch 4, random", lambda: mlp([32, 16, 8, 10]),
                      4, (32,), 10, "random", 2, 1),
            "b": Case("b", "quick: mlp([64, 32, 16, 8, 5]), batch 1, random",
                      lambda: mlp([64, 32, 16, 8, 5]), 1, (64,), 5, "random", 2, 1),
            "c": Case("c", "quick: CNN on 1x12x12, batch 4, random", lambda: cnn(quick=True),
                      4, (1, 12, 12), 10, "random", 2, 1,
                      hopfield_build=lambda: cnn(quick=True, activation="clip")),
            "d": Case("d", "quick: VGG-5 at width 1/32 on 3x16x16, batch 2, random",
                      lambda: VGG(5, in_shape=(3, 16, 16), width=1 / 32), 2, (3, 16, 16), 10, "random", 2, 1,
                      hopfield_build=lambda: VGG(5, in_shape=(3, 16, 16), width=1 / 32, activation="clip")),
            "e": Case("e", "quick: ResidualMLP(32, 8, depth 6), batch 4, random",
                      lambda: ResidualMLP(32, 8, 6, 10, "tanh", "mupc"), 4, (32,), 10, "random", 2, 1,
                      no_hopfield=NO_RESIDUAL_HOPFIELD),
            "f": Case("f", "quick: VGG-5 at width 1/32 on 3x16x16, tanh, average pooling, batch 2, random",
                      lambda: VGG(5, in_shape=(3, 16, 16), width=1 / 32, activation="tanh", pool="avg"), 2,
                      (3, 16, 16), 10, "random", 2, 1,
                      hopfield_build=lambda: VGG(5, in_shape=(3, 16, 16), width=1 / 32, activation="clip", pool="avg")),
        }
    return {
        "a": Case("a", "mlp([784, 128, 64, 10]), batch 64, real MNIST, CE (Millidge et al. 2022 A.1)",
                  lambda: mlp([784, 128, 64, 10]), 64, (784,), 10, "mnist", 51, 5),
        "b": Case("b", "mlp([50176, 4096, 2048, 1024, 27]), batch 1, random float32 input, CE "
                       "(Song et al. 2020 A.9)", lambda: mlp([50176, 4096, 2048, 1024, 27]), 1, (50176,), 27,
                  "random", 21, 2),
        "c": Case("c", "CNN conv(1,8,5)-pool-conv(8,16,5)-pool-fc(256,64)-fc(64,10), batch 64, "
                       "real MNIST 1x28x28, CE", cnn, 64, (1, 28, 28), 10, "mnist", 31, 3,
                  hopfield_build=lambda: cnn(activation="clip")),
        "d": Case("d", "VGG-5 (128-256-512-512, 3x3 convs, max-pool, ReLU), batch 32, random 3x32x32, CE",
                  lambda: VGG(5), 32, (3, 32, 32), 10, "random", 5, 1,
                  hopfield_build=lambda: VGG(5, activation="clip")),
        "e": Case("e", "ResidualMLP(784, width 128, depth 20, tanh, muPC), batch 64, real MNIST, CE",
                  lambda: ResidualMLP(784, 128, 20, 10, "tanh", "mupc"), 64, (784,), 10, "mnist", 21, 3, no_hopfield=NO_RESIDUAL_HOPFIELD),
        "f": Case("f", "VGG-5 (128-256-512-512, 3x3 convs) with a smooth energy: tanh, average pooling, "
                       "batch 32, random 3x32x32, CE", lambda: VGG(5, activation="tanh", pool="avg"), 32,
                  (3, 32, 32), 10, "random", 5, 1,
                  hopfield_build=lambda: VGG(5, activation="clip", pool="avg")),
    }


def data_root() -> Path | None:
    """The folder holding MNIST/raw/ (``pl_energy.data.mnist.find_checkout_mnist``)."""
    return find_checkout_mnist(REPO)


def mnist_batches(case: Case, count: int, root: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches from the start of the seeded (seed 0) 50k train split, pixels / 255.

    The raw .gz files are read in place by the data module's reader: the same split as
    ``pl_energy.data.MNISTDataModule(seed=0)``.
    """
    raw = root / "MNIST" / "raw"
    images = read_idx(raw, MNIST_FILES[0].removesuffix(".gz"))
    labels = read_idx(raw, MNIST_FILES[1].removesuffix(".gz")).long()
    order, _ = seeded_split(TRAIN_TOTAL, 10_000, seed=0)
    chosen = order[: count * case.batch]
    x = images[chosen].to(torch.float32).div_(255.0).reshape(len(chosen), *case.input_shape)
    y = labels[chosen]
    return [(x[i * case.batch:(i + 1) * case.batch], y[i * case.batch:(i + 1) * case.batch])
            for i in range(count)]


def random_batches(case: Case, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(case.batch, *case.input_shape, generator=gen),
             torch.randint(0, case.classes, (case.batch,), generator=gen)) for _ in range(count)]


def seed_mlp_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor, bool]:
    """Case (a)'s network (Millidge et al. 2022's MLP, torch seed 0), its first batch and whether
    that batch is real MNIST (random inputs where MNIST is not found), for the benchmarks that
    time single calls on it."""
    case = cases(False)["a"]
    root = data_root()
    x, y = (mnist_batches(case, 1, root) if root else random_batches(case, 1))[0]
    torch.manual_seed(0)
    return case.build(), x, y, root is not None
