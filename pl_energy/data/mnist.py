"""MNIST as a LightningDataModule.

* torchvision's MNIST, pixels scaled to [0, 1] (``uint8 / 255``, no
  normalisation).
* ``flatten=True`` (default) yields 784-float vectors for fully-connected
  nets; ``flatten=False`` yields ``1x28x28`` images for CNNs.
* Splits: the 60,000 training images are split (seeded ``torch.randperm``
  with a ``torch.Generator`` seeded by ``seed``) into 50,000 train and
  ``val_size`` = 10,000 validation images; the test split is the official
  10,000 test images. ``limit_train=N`` keeps only the first N training
  examples of the (seeded) train split, for quick runs.
* The whole data set is decoded once into float tensors held in
  :class:`~torch.utils.data.TensorDataset` s (about 200 MB), which is far
  faster than per-item PIL transforms.
* ``data_dir`` defaults to the env var ``PL_ENERGY_DATA``, else ``./data``.
  Downloading happens in :meth:`prepare_data` only. Without network, put the
  four original files ``train-images-idx3-ubyte.gz``,
  ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz`` and
  ``t10k-labels-idx1-ubyte.gz`` into ``<data_dir>/MNIST/raw/``: torchvision
  then extracts them without downloading anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from .loading import SplitDataModule

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
TRAIN_TOTAL = 60_000


def default_data_dir() -> str:
    """``$PL_ENERGY_DATA`` if set (and non-empty), else ``./data``."""
    return os.environ.get("PL_ENERGY_DATA") or "./data"


class MNISTDataModule(SplitDataModule):
    """MNIST with a seeded 50k/10k train/validation split and the 10k test set.

    Args:
        data_dir: folder holding ``MNIST/raw/`` (default ``$PL_ENERGY_DATA`` or ``./data``).
        batch_size: batch size of all loaders.
        num_workers: DataLoader workers (0 is fastest for in-memory tensors).
        pin_memory: pin host memory (useful when training on a GPU).
        persistent_workers: keep workers alive between epochs (only used when ``num_workers > 0``).
        flatten: 784-vectors (True) or ``1x28x28`` images (False).
        seed: seed of the train/validation split.
        val_size: number of training-set images held out for validation.
        limit_train: if set, use only the first N examples of the train split.
        shuffle: shuffle the train loader.
        download: allow :meth:`prepare_data` to download missing files.

    Attributes ``num_classes`` (10), ``input_shape`` (``(784,)`` or ``(1, 28, 28)``)
    and ``input_dim`` (784) describe the data for building a model.
    """

    num_classes: int = 10

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        flatten: bool = True,
        seed: int = 0,
        val_size: int = 10_000,
        limit_train: int | None = None,
        shuffle: bool = True,
        download: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not 0 < val_size < TRAIN_TOTAL:
            raise ValueError(f"val_size must be in 1..{TRAIN_TOTAL - 1}, got {val_size}")
        if limit_train is not None and limit_train < 1:
            raise ValueError(f"limit_train must be a positive int or None, got {limit_train}")
        self.data_dir = str(data_dir) if data_dir else default_data_dir()
        self.set_loader_options(batch_size, num_workers, pin_memory, persistent_workers, shuffle)
        self.flatten = flatten
        self.seed = seed
        self.val_size = val_size
        self.limit_train = limit_train
        self.download = download
        self.input_shape: tuple[int, ...] = (784,) if flatten else (1, 28, 28)
        self.input_dim: int = 784
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    # ------------------------------------------------------------------ files
    @property
    def raw_folder(self) -> Path:
        return Path(self.data_dir) / "MNIST" / "raw"

    def _missing_error(self) -> FileNotFoundError:
        return FileNotFoundError(
            f"MNIST not found and could not be downloaded: put the four files {', '.join(MNIST_FILES)} "
            f"into {self.raw_folder.resolve()}/ (or point data_dir / $PL_ENERGY_DATA at a folder holding MNIST/raw/)"
        )

    def prepare_data(self) -> None:
        """Download (or extract the local ``.gz`` files) once; never called per process."""
        from torchvision.datasets import MNIST

        for train in (True, False):
            try:
                MNIST(self.data_dir, train=train, download=self.download)
            except Exception as exc:  # URLError, RuntimeError("Dataset not found"/"Error downloading"), ...
                raise self._missing_error() from exc

    # ------------------------------------------------------------------ setup
    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.datasets import MNIST

        try:
            ds = MNIST(self.data_dir, train=train, download=False)
        except RuntimeError as exc:
            raise self._missing_error() from exc
        x = ds.data.to(torch.float32).div_(255.0)
        x = x.reshape(len(x), 784) if self.flatten else x.unsqueeze(1)
        return x, ds.targets.to(torch.long)

    def split_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (into the 60k training set) of the train and validation splits for ``seed``."""
        gen = torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(TRAIN_TOTAL, generator=gen)
        train_idx, val_idx = perm[: TRAIN_TOTAL - self.val_size], perm[TRAIN_TOTAL - self.val_size :]
        if self.limit_train is not None:
            train_idx = train_idx[: self.limit_train]
        return train_idx, val_idx

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            x, y = self._load(train=True)
            self.train_indices, self.val_indices = self.split_indices()
            self.train_set = TensorDataset(x[self.train_indices], y[self.train_indices])
            self.val_set = TensorDataset(x[self.val_indices], y[self.val_indices])
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = TensorDataset(*self._load(train=False))
