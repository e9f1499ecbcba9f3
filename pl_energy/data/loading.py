"""What every pl_energy DataModule shares: the data folder, the seeded train/validation split,
and the DataLoaders it serves from its train/val/test datasets."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from .resumable import ResumableDataLoader, ResumableSampler


def default_data_dir() -> str:
    """``$PL_ENERGY_DATA`` if set (and non-empty), else ``./data``: the folder every data set
    lives under (``MNIST/raw``, ``FashionMNIST/raw``, ``cifar-10-batches-py``, ``imagenet``...)."""
    return os.environ.get("PL_ENERGY_DATA") or "./data"


def check_split(total: int, val_size: int, limit_train: int | None = None) -> None:
    """Refuse a validation size that leaves no training (or no validation) items, and a
    non-positive ``limit_train``."""
    if not 0 < val_size < total:
        raise ValueError(f"val_size must be in 1..{total - 1}, got {val_size}")
    if limit_train is not None and limit_train < 1:
        raise ValueError(f"limit_train must be a positive int or None, got {limit_train}")


def seeded_split(total: int, val_size: int, seed: int,
                 limit_train: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the train and validation splits of a training set of ``total`` items: a
    ``torch.randperm`` seeded by ``seed``, its last ``val_size`` for validation; ``limit_train``
    keeps the first N of the train split."""
    check_split(total, val_size, limit_train)
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    train, val = perm[: total - val_size], perm[total - val_size:]
    return (train if limit_train is None else train[:limit_train]), val


class SplitDataModule(pl.LightningDataModule):
    """Subclasses set ``train_set``, ``val_set`` and ``test_set`` in ``setup`` and call
    ``set_loader_options`` in ``__init__``."""

    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None

    def set_loader_options(self, batch_size: int, num_workers: int, pin_memory: bool,
                           persistent_workers: bool, shuffle: bool) -> None:
        """Store the DataLoader options (persistent workers only when there are workers)."""
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.shuffle = shuffle

    def _loader(self, dataset: Dataset | None, shuffle: bool, resumable: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before requesting a dataloader")
        options = dict(batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory,
                       persistent_workers=self.persistent_workers)
        if not resumable:
            return DataLoader(dataset, shuffle=shuffle, **options)
        sampler = ResumableSampler(len(dataset), self.batch_size, shuffle, self._batches_done)
        return ResumableDataLoader(dataset, sampler=sampler, **options)

    def _batches_done(self) -> int:
        """The batches of the current epoch a run resumed from a checkpoint saved now would not
        take again (0 outside a fit): those taken and processed; a batch taken but not processed
        (an exception inside it, saved by ``OnExceptionCheckpoint``) is taken again by the resumed
        run, as Lightning's loop counts it."""
        trainer = self.trainer
        if trainer is None:
            return 0
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return int(progress.processed if progress.processed == progress.ready else progress.completed)

    def train_dataloader(self) -> DataLoader:
        """The training batches; on one process a :class:`ResumableDataLoader`, which resumes
        mid-epoch exactly. Under DDP Lightning's ``DistributedSampler`` shards and shuffles them
        (a mid-epoch resume then restarts the epoch's order, as Lightning warns)."""
        distributed = self.trainer is not None and self.trainer.world_size > 1
        return self._loader(self.train_set, self.shuffle, resumable=not distributed)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)
