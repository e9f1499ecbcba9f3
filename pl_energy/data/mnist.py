"""MNIST and Fashion-MNIST as LightningDataModules (the same IDX files, LeCun et al. 1998;
Xiao et al. 2017).

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
  ``t10k-labels-idx1-ubyte.gz`` into ``<data_dir>/MNIST/raw/``. They are read
  as they are (gzip-compressed or extracted), so the folder may be read-only,
  and a truncated, corrupt or swapped file is named with its problem.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from ..errors import MissingFile, RefusedValue
from .loading import SplitDataModule, check_split, default_data_dir, seeded_split

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
TRAIN_TOTAL = 60_000
#: IDX header of each file: (magic number, item count, item shape), LeCun et al.'s format.
IDX_HEADERS = {"train-images-idx3-ubyte": (2051, 60_000, (28, 28)), "train-labels-idx1-ubyte": (2049, 60_000, ()),
               "t10k-images-idx3-ubyte": (2051, 10_000, (28, 28)), "t10k-labels-idx1-ubyte": (2049, 10_000, ())}


def read_idx(raw_folder: Path, stem: str) -> torch.Tensor:
    """One MNIST file as a uint8 tensor, from ``stem`` or ``stem.gz`` in ``raw_folder``; a file
    that is missing, truncated, not gzip, or another of the four (swapped) fails naming it."""
    plain, packed = raw_folder / stem, raw_folder / f"{stem}.gz"
    path = plain if plain.is_file() else packed
    if not path.is_file():
        raise MissingFile(f"{packed} is missing")
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise RefusedValue(f"{path} is not a complete gzip file ({exc}): download it again") from exc
    magic, count, shape = IDX_HEADERS[stem]
    header = 4 * (2 + len(shape))
    values = [int.from_bytes(data[i:i + 4], "big") for i in range(0, min(header, len(data)) - 3, 4)]
    if values[:1] != [magic] or values[1:] != [count, *shape]:
        raise RefusedValue(f"{path} does not hold {stem} (its header reads {values}, expected "
                         f"{[magic, count, *shape]}): the files may be swapped or corrupt")
    size = count * (shape[0] * shape[1] if shape else 1)
    if len(data) != header + size:
        raise RefusedValue(f"{path} holds {len(data) - header} bytes of data, expected {size}: it is truncated")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(count, *shape)


def holds_mnist(folder: str | Path, name: str = "MNIST") -> bool:
    """True if ``<folder>/<name>/raw/`` holds the four IDX files (gzip-compressed or not)."""
    raw = Path(folder) / name / "raw"
    return all((raw / stem).is_file() or (raw / f"{stem}.gz").is_file() for stem in IDX_HEADERS)


def find_mnist(*candidates: str | Path | None) -> Path | None:
    """The first of ``candidates`` (None entries skipped) that holds MNIST, else None."""
    for candidate in candidates:
        if candidate and holds_mnist(candidate):
            return Path(candidate)
    return None


def find_checkout_mnist(checkout: str | Path, data_dir: str | Path | None = None) -> Path | None:
    """The data folder the examples and benchmarks of a checkout read MNIST from: ``data_dir``
    if given, else the first of ``$PL_ENERGY_DATA``, ``../shared/data`` beside the checkout and
    ``./data`` that holds it."""
    if data_dir:
        return find_mnist(data_dir)
    return find_mnist(os.environ.get("PL_ENERGY_DATA"), Path(checkout).parent / "shared" / "data", "./data")


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
    #: The data set's folder under ``data_dir`` (``<data_dir>/<folder>/raw``) and torchvision class.
    folder: str = "MNIST"

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
        check_split(TRAIN_TOTAL, val_size, limit_train)
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
        return Path(self.data_dir) / self.folder / "raw"

    def _missing_error(self, cause: str = "") -> MissingFile:
        how = "could not be downloaded" + cause if self.download else "download=False"
        return MissingFile(
            f"{self.folder} not found ({how}): put the four files {', '.join(MNIST_FILES)} "
            f"into {self.raw_folder.resolve()}/ (or point data_dir / $PL_ENERGY_DATA at a folder holding "
            f"{self.folder}/raw/)"
        )

    def _present(self) -> bool:
        return holds_mnist(self.data_dir, self.folder)

    def prepare_data(self) -> None:
        """Download the files once when they are missing (never called per process); files that
        are present are read as they are, without a download or extraction."""
        if self._present():
            return
        if not self.download:
            raise self._missing_error()
        import torchvision.datasets

        for train in (True, False):
            try:
                getattr(torchvision.datasets, self.folder)(self.data_dir, train=train, download=True)
            except Exception as exc:  # URLError, RuntimeError("Error downloading"), PermissionError, ...
                cause = " ".join(str(exc).split())  # one line, however the exception wrote it
                raise self._missing_error(f" ({type(exc).__name__}: {cause[:200]})") from exc

    # ------------------------------------------------------------------ setup
    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._present():
            raise self._missing_error()
        split = "train" if train else "t10k"
        images = read_idx(self.raw_folder, f"{split}-images-idx3-ubyte")
        labels = read_idx(self.raw_folder, f"{split}-labels-idx1-ubyte")
        x = images.to(torch.float32).div_(255.0)
        x = x.reshape(len(x), 784) if self.flatten else x.unsqueeze(1)
        return x, labels.to(torch.long)

    def split_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (into the 60k training set) of the train and validation splits for ``seed``."""
        return seeded_split(TRAIN_TOTAL, self.val_size, self.seed, self.limit_train)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            x, y = self._load(train=True)
            self.train_indices, self.val_indices = self.split_indices()
            self.train_set = TensorDataset(x[self.train_indices], y[self.train_indices])
            self.val_set = TensorDataset(x[self.val_indices], y[self.val_indices])
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = TensorDataset(*self._load(train=False))


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Xiao et al. 2017): 28x28 grey images of 10 kinds of clothing, in MNIST's
    IDX files under ``<data_dir>/FashionMNIST/raw/``, with MNIST's splits and options (the
    arguments of :class:`MNISTDataModule`)."""

    folder = "FashionMNIST"
