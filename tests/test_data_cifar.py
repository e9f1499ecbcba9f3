"""CIFAR-10/100 and Fashion-MNIST DataModules on files written here in each data set's real
on-disk format (CIFAR's pickled "python version" batches, Fashion-MNIST's IDX files)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

import pl_energy
from pl_energy.data import CIFAR10DataModule, CIFAR100DataModule, FashionMNISTDataModule
from pl_energy.data.cifar import AugmentedImages

from data_fixtures import CIFAR, PER_FILE, write_cifar

@pytest.mark.parametrize("cls", [CIFAR10DataModule, CIFAR100DataModule])
def test_cifar_reads_the_python_batches_into_the_seeded_split(cls, tmp_path):
    labels = write_cifar(tmp_path, cls)
    dm = cls(data_dir=str(tmp_path), val_size=50, normalize=False, download=False, batch_size=8)
    dm.prepare_data()
    dm.setup()
    x_train, y_train = dm.train_set.tensors
    x_val, y_val = dm.val_set.tensors
    x_test, y_test = dm.test_set.tensors
    assert x_train.shape == (150, 3, 32, 32) and x_val.shape == (50, 3, 32, 32) and len(x_test) == PER_FILE
    assert y_test.tolist() == labels["test"]
    # the split is the seeded permutation, and each image keeps its own label and pixels
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    assert y_val.tolist() == [labels["train"][i] for i in perm[150:]]
    first = int(perm[0])
    assert torch.allclose(x_train[0, :, 0, 0], torch.tensor([first % 256, 2 * first % 256, 7]) / 255.0)
    assert dm.num_classes == CIFAR[cls.__name__][4]
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].shape == (8, 3, 32, 32)


def test_normalisation_and_flattening(tmp_path):
    write_cifar(tmp_path, CIFAR10DataModule)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_size=50, flatten=True, download=False)
    dm.setup("test")
    x, _ = dm.test_set.tensors
    assert x.shape == (PER_FILE, 3072)
    blue = x.view(-1, 3, 32, 32)[:, 2]  # raw value 7 everywhere
    assert torch.allclose(blue, torch.full_like(blue, (7 / 255 - 0.4465) / 0.2616))


def test_augmentation_crops_and_flips_the_train_split_only(tmp_path):
    write_cifar(tmp_path, CIFAR10DataModule)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_size=50, augment=True, normalize=False, download=False)
    dm.setup("fit")
    assert isinstance(dm.train_set, AugmentedImages) and not isinstance(dm.val_set, AugmentedImages)
    torch.manual_seed(0)
    image = torch.arange(3 * 32 * 32, dtype=torch.float32).view(3, 32, 32)
    augmented = AugmentedImages(image[None], torch.tensor([3]), torch.zeros(3), torch.ones(3))
    seen = set()
    for _ in range(50):
        out, label = augmented[0]
        assert out.shape == (3, 32, 32) and label == 3
        # every output is a shifted (zero-filled) window of the image or of its mirror image
        rows = [r for r in range(-4, 5) for c in range(-4, 5) for flip in (False, True)
                if _window(image.flip(-1) if flip else image, r, c).equal(out)]
        assert rows, "not a crop of the padded image"
        seen.add(out.sum().item())
    assert len(seen) > 5  # random crops differ


def _window(image, dy, dx):
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    return padded[:, 4 + dy:4 + dy + 32, 4 + dx:4 + dx + 32]


def test_augmenting_flat_images_is_refused():
    with pytest.raises(ValueError, match="needs flatten=False"):
        CIFAR10DataModule(flatten=True, augment=True)


def test_a_missing_or_corrupt_batch_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        CIFAR10DataModule(data_dir=str(tmp_path), download=False).prepare_data()
    write_cifar(tmp_path, CIFAR10DataModule)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02truncated")
    with pytest.raises(ValueError, match="data_batch_3 is not a CIFAR10 batch"):
        CIFAR10DataModule(data_dir=str(tmp_path), val_size=50, download=False).setup("fit")


def _write_idx(path, magic, dims, payload):
    path.write_bytes(gzip.compress(b"".join(v.to_bytes(4, "big") for v in (magic, *dims)) + payload))


def test_fashion_mnist_reads_its_own_idx_folder(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, count in (("train", 60_000), ("t10k", 10_000)):
        pixels = np.zeros((count, 784), dtype=np.uint8)
        pixels[:, 0] = np.arange(count) % 251
        _write_idx(raw / f"{split}-images-idx3-ubyte.gz", 2051, (count, 28, 28), pixels.tobytes())
        _write_idx(raw / f"{split}-labels-idx1-ubyte.gz", 2049, (count,), bytes(i % 10 for i in range(count)))
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), download=False, flatten=False)
    dm.prepare_data()
    dm.setup("test")
    x, y = dm.test_set.tensors
    assert x.shape == (10_000, 1, 28, 28) and torch.allclose(x[:3, 0, 0, 0], torch.tensor([0, 1, 2]) / 255)
    assert y[:11].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    with pytest.raises(FileNotFoundError, match="FashionMNIST/raw"):
        FashionMNISTDataModule(data_dir=str(tmp_path / "elsewhere"), download=False).prepare_data()


def test_every_data_module_is_reachable_after_a_bare_import():
    for name in ("MNISTDataModule", "FashionMNISTDataModule", "CIFAR10DataModule", "CIFAR100DataModule",
                 "ImageNetDataModule"):
        assert getattr(pl_energy.data, name).__name__ == name
