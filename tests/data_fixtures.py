"""Shared fixtures for the data-module tests (imported by test modules, not a conftest)."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# wnids used by the fake ImageNet trees
TENCH, TABBY, CHURCH, TRAILER_TRUCK = "n01440764", "n02123045", "n03028079", "n04467665"
UNMAPPED = "n02747177"  # ashcan: under none of the 27 categories
FAKE_WNIDS = (TENCH, TABBY, CHURCH, TRAILER_TRUCK, UNMAPPED)
IMAGES_PER_CLASS = {"train": 3, "val": 2}


def data_candidates() -> list[Path]:
    """Where MNIST may already be: ``$PL_ENERGY_DATA``, the CLI's default ``./data`` (from the
    repository root, where the README's main job puts it, and from the working directory), and
    ``<repo>/../shared/data``."""
    candidates = [Path(os.environ["PL_ENERGY_DATA"])] if os.environ.get("PL_ENERGY_DATA") else []
    return candidates + [REPO / "data", Path.cwd() / "data", REPO.parent / "shared" / "data"]


def shared_data_root() -> Path | None:
    """The first of ``data_candidates()`` that holds MNIST/raw/ with the 4 files."""
    for c in data_candidates():
        if all((c / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES):
            return c
    return None


def download_mnist(timeout: float = 10.0) -> Path | None:
    """Download MNIST into ``<repo>/data`` (what the main job does); None when offline."""
    import socket

    from torchvision.datasets import MNIST

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        MNIST(str(REPO / "data"), train=True, download=True)
        MNIST(str(REPO / "data"), train=False, download=True)
    except Exception:  # any network failure means: offline
        return None
    finally:
        socket.setdefaulttimeout(previous)
    return shared_data_root()


MISSING_MNIST = (
    "MNIST not found in $PL_ENERGY_DATA, ./data or ../shared/data, and it could not be downloaded: "
    "run `pl-energy fit --trainer.fast_dev_run 1` from the repository root once online (it puts MNIST "
    "in ./data), or set PL_ENERGY_DATA to a folder holding MNIST/raw/*.gz"
)


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """A writable data dir with a copy of the 4 raw MNIST .gz files in MNIST/raw/."""
    src = shared_data_root() or download_mnist()
    if src is None:
        pytest.skip(MISSING_MNIST)
    dst = tmp_path_factory.mktemp("mnist_data")
    (dst / "MNIST" / "raw").mkdir(parents=True)
    for f in MNIST_FILES:
        shutil.copy(src / "MNIST" / "raw" / f, dst / "MNIST" / "raw" / f)
    return dst


def write_jpeg_tree(root: Path, wnids=FAKE_WNIDS, size=(64, 48), seed: int = 0) -> Path:
    """Write ``root/{train,val}/<wnid>/*.JPEG`` random-noise JPEGs."""
    rng = np.random.default_rng(seed)
    for split, n in IMAGES_PER_CLASS.items():
        for wnid in wnids:
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr, "RGB").save(d / f"{wnid}_{i}.JPEG", "JPEG")
    return root


@pytest.fixture(scope="session")
def imagenet_folder(tmp_path_factory) -> Path:
    """Plain ImageFolder layout."""
    return write_jpeg_tree(tmp_path_factory.mktemp("imagenet_folder"))


@pytest.fixture(scope="session")
def imagenet_torchvision(tmp_path_factory) -> Path:
    """torchvision's ImageNet layout: the same tree plus meta.bin."""
    root = write_jpeg_tree(tmp_path_factory.mktemp("imagenet_tv"))
    wnid_to_classes = {w: (f"class {w}",) for w in FAKE_WNIDS}
    torch.save((wnid_to_classes, None), root / "meta.bin")
    return root


# --- CIFAR's python batches, in their real format (pickled dicts, as the tar.gz extracts) -----
CIFAR = {"CIFAR10DataModule": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                             b"labels", 10),
         "CIFAR100DataModule": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100)}
PER_FILE = 40


def _image(index: int) -> np.ndarray:
    """Image ``index``: red plane = index % 256, green = 2 * index % 256, blue = 7."""
    planes = [np.full(1024, index % 256), np.full(1024, (2 * index) % 256), np.full(1024, 7)]
    return np.concatenate(planes).astype(np.uint8)


def write_cifar(root, cls) -> dict[str, list[int]]:
    """The pickled batches of ``cls`` (numpy ``data`` of N x 3072 uint8, list labels, as
    ``cifar-*-python.tar.gz`` extracts them); returns the labels written per split."""
    folder, train, test, key, classes = CIFAR[cls if isinstance(cls, str) else cls.__name__]
    (root / folder).mkdir(parents=True)
    written, start = {"train": [], "test": []}, 0
    for split, names in (("train", train), ("test", test)):
        count = PER_FILE * (5 // len(names)) if split == "train" else PER_FILE
        for name in names:
            indices = range(start, start + count)
            batch = {b"batch_label": name.encode(), key: [i % classes for i in indices],
                     b"data": np.stack([_image(i) for i in indices]),
                     b"filenames": [f"{i}.png".encode() for i in indices]}
            if key == b"fine_labels":
                batch[b"coarse_labels"] = [i % 20 for i in indices]
            (root / folder / name).write_bytes(pickle.dumps(batch, protocol=2))
            written[split] += batch[key]
            start += count
    return written
