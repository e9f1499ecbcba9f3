"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) as LightningDataModules.

* The files are the "python version" torchvision downloads and extracts:
  ``<data_dir>/cifar-10-batches-py/{data_batch_1..5, test_batch}`` and
  ``<data_dir>/cifar-100-python/{train, test}``, pickled dicts whose ``data`` is an
  ``N x 3072`` uint8 array (the red, green and blue 32x32 planes of each image) and whose
  ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100) are the classes. They are read as they
  are (the folder may be read-only); a missing, truncated or foreign file is named.
* Splits: the 50,000 training images are split (seeded ``torch.randperm``) into train and
  ``val_size`` = 5,000 validation images (the split of Laborieux et al. 2021 and of the PC
  benchmarks of Pinchetti et al. 2024); the test split is the official 10,000 test images.
* Pixels are scaled to [0, 1]; ``normalize=True`` (default) then standardises each channel
  with the training set's mean and standard deviation, as the PC and EP CIFAR literature does.
* ``augment=True`` gives the train split the standard augmentation of that literature: a random
  32x32 crop of the image zero-padded by 4 pixels, and a horizontal flip with probability 1/2
  (on the raw image, before normalisation). Validation and test images are never augmented.
* The whole data set is decoded once into float tensors (about 600 MB for CIFAR-10).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import MissingFile, RefusedValue
from .loading import SplitDataModule, check_split, default_data_dir, seeded_split

TRAIN_TOTAL = 50_000  # images in the training files (the split's settings are checked against it)


class AugmentedImages(Dataset):
    """Images (``N x C x H x W``, values in [0, 1]) with a random ``padding``-padded crop and a
    random horizontal flip per item, then the normalisation ``(x - mean) / std``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, padding: int = 4) -> None:
        self.images, self.labels = images, labels
        self.mean, self.std, self.padding = mean.view(-1, 1, 1), std.view(-1, 1, 1), padding

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        height, width = image.shape[-2:]
        pad = self.padding
        padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
        top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
        image = padded[:, top:top + height, left:left + width]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return (image - self.mean) / self.std, self.labels[index]


class CIFAR10DataModule(SplitDataModule):
    """CIFAR-10: 32x32 colour images of 10 classes; 45k/5k train/validation, 10k test.

    Args:
        data_dir: folder holding ``cifar-10-batches-py/`` (default ``$PL_ENERGY_DATA`` or
            ``./data``).
        batch_size: batch size of all loaders.
        num_workers: DataLoader workers (0 is fastest for in-memory tensors without
            augmentation; with ``augment``, a few workers hide its cost).
        pin_memory: pin host memory (useful when training on a GPU).
        persistent_workers: keep workers alive between epochs (only used when ``num_workers > 0``).
        flatten: 3072-vectors (True) or ``3x32x32`` images (False, default).
        normalize: standardise each channel with the training set's mean and std.
        augment: random crop (padding 4) and horizontal flip of the train split.
        seed: seed of the train/validation split.
        val_size: number of training images held out for validation.
        limit_train: if set, use only the first N examples of the train split.
        shuffle: shuffle the train loader.
        download: allow :meth:`prepare_data` to download missing files (with torchvision).
    """

    num_classes: int = 10
    #: The extracted folder, its training and test files, the label key, torchvision's class.
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = b"labels"
    torchvision_name = "CIFAR10"
    #: Channel means and standard deviations of the 50,000 training images.
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        flatten: bool = False,
        normalize: bool = True,
        augment: bool = False,
        seed: int = 0,
        val_size: int = 5_000,
        limit_train: int | None = None,
        shuffle: bool = True,
        download: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_split(TRAIN_TOTAL, val_size, limit_train)
        if augment and flatten:
            raise ValueError("augment crops and flips images: it needs flatten=False")
        self.data_dir = str(data_dir) if data_dir else default_data_dir()
        self.set_loader_options(batch_size, num_workers, pin_memory, persistent_workers, shuffle)
        self.flatten, self.normalize, self.augment = flatten, normalize, augment
        self.seed, self.val_size, self.limit_train, self.download = seed, val_size, limit_train, download
        self.input_shape: tuple[int, ...] = (3072,) if flatten else (3, 32, 32)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def root(self) -> Path:
        return Path(self.data_dir) / self.folder

    def _missing_error(self, cause: str = "") -> MissingFile:
        how = "could not be downloaded" + cause if self.download else "download=False"
        files = ", ".join((*self.train_files, *self.test_files))
        return MissingFile(
            f"{self.torchvision_name} not found ({how}): extract the python version "
            f"({self.folder}/: {files}) into {Path(self.data_dir).resolve()}/ (or point data_dir / "
            "$PL_ENERGY_DATA at the folder holding it)")

    def _present(self) -> bool:
        return all((self.root / name).is_file() for name in (*self.train_files, *self.test_files))

    def prepare_data(self) -> None:
        """Download and extract the files once when they are missing (never called per process)."""
        if self._present():
            return
        if not self.download:
            raise self._missing_error()
        import torchvision.datasets

        try:
            getattr(torchvision.datasets, self.torchvision_name)(self.data_dir, train=True, download=True)
        except Exception as exc:  # URLError, RuntimeError, PermissionError, ...
            cause = " ".join(str(exc).split())
            raise self._missing_error(f" ({type(exc).__name__}: {cause[:200]})") from exc

    def _read(self, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The images (``N x 3 x 32 x 32`` uint8) and labels of the pickled ``names``."""
        if not self._present():
            raise self._missing_error()
        images, labels = [], []
        for name in names:
            path = self.root / name
            try:
                with open(path, "rb") as handle:
                    batch = pickle.load(handle, encoding="bytes")
                data, targets = batch[b"data"], batch[self.label_key]
            except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
                raise RefusedValue(f"{path} is not a {self.torchvision_name} batch "
                                 f"({type(exc).__name__}: {exc}): download it again") from exc
            data = torch.as_tensor(data, dtype=torch.uint8)
            if data.dim() != 2 or data.shape[1] != 3072 or data.shape[0] != len(targets):
                raise RefusedValue(f"{path} holds data of shape {tuple(data.shape)} for {len(targets)} labels, "
                                 "expected N x 3072 for N labels: it is truncated or corrupt")
            images.append(data.view(-1, 3, 32, 32))
            labels.append(torch.as_tensor(targets, dtype=torch.long))
        x, y = torch.cat(images), torch.cat(labels)
        if y.min() < 0 or y.max() >= self.num_classes:
            raise RefusedValue(f"{self.root}: labels outside 0..{self.num_classes - 1}")
        return x, y

    def _dataset(self, images: torch.Tensor, labels: torch.Tensor, augment: bool) -> Dataset:
        x = images.to(torch.float32).div_(255.0)
        mean = torch.tensor(self.mean if self.normalize else (0.0,) * 3)
        std = torch.tensor(self.std if self.normalize else (1.0,) * 3)
        if augment:
            return AugmentedImages(x, labels, mean, std)
        x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        return TensorDataset(x.reshape(len(x), -1) if self.flatten else x, labels)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            x, y = self._read(self.train_files)
            train, val = seeded_split(len(x), self.val_size, self.seed, self.limit_train)
            self.train_set = self._dataset(x[train], y[train], self.augment)
            self.val_set = self._dataset(x[val], y[val], False)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._dataset(*self._read(self.test_files), False)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: CIFAR-10's format, splits and options with 100 fine classes (the arguments of
    :class:`CIFAR10DataModule`; ``data_dir`` holds ``cifar-100-python/``)."""

    num_classes = 100
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = b"fine_labels"
    torchvision_name = "CIFAR100"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
