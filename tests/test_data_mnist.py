from __future__ import annotations

import urllib.error

import pytest
import torch

from pl_energy.data import MNISTDataModule

try:  # tests/ as a package or as a plain folder on sys.path (pytest's default rootdir import)
    from .data_fixtures import MNIST_FILES, mnist_root  # noqa: F401  (fixture)
except ImportError:
    from data_fixtures import MNIST_FILES, mnist_root  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def dm_flat(mnist_root):  # noqa: F811
    dm = MNISTDataModule(data_dir=str(mnist_root), batch_size=128)
    dm.prepare_data()
    dm.setup()
    return dm


def test_split_sizes_and_range(dm_flat):
    assert len(dm_flat.train_set) == 50_000
    assert len(dm_flat.val_set) == 10_000
    assert len(dm_flat.test_set) == 10_000
    for ds in (dm_flat.train_set, dm_flat.val_set, dm_flat.test_set):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.long
        assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.99
        assert set(y.unique().tolist()) == set(range(10))
    # train and val are disjoint and cover the 60k training images
    idx = torch.cat([dm_flat.train_indices, dm_flat.val_indices])
    assert idx.unique().numel() == 60_000


def test_flat_batches(dm_flat):
    assert dm_flat.input_shape == (784,) and dm_flat.input_dim == 784 and dm_flat.num_classes == 10
    x, y = next(iter(dm_flat.train_dataloader()))
    assert x.shape == (128, 784) and y.shape == (128,)
    x, _ = next(iter(dm_flat.test_dataloader()))
    assert x.shape == (128, 784)


def test_image_shape(mnist_root):  # noqa: F811
    dm = MNISTDataModule(data_dir=str(mnist_root), flatten=False, batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.input_shape == (1, 28, 28) and dm.test_set is None
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (16, 1, 28, 28)
    dm.setup("test")
    assert dm.test_set.tensors[0].shape == (10_000, 1, 28, 28)


def test_same_pixels_as_torchvision(dm_flat, mnist_root):  # noqa: F811
    from torchvision.datasets import MNIST
    from torchvision.transforms.functional import to_tensor

    tv = MNIST(str(mnist_root), train=True, download=True)  # an independent reader: torchvision's
    for j in (0, 123, 49_999):
        i = int(dm_flat.train_indices[j])
        img, label = tv[i]
        x, y = dm_flat.train_set[j]
        assert torch.equal(x, to_tensor(img).reshape(784)) and int(y) == label


def test_seeded_split(mnist_root):  # noqa: F811
    a = MNISTDataModule(data_dir=str(mnist_root), seed=0).split_indices()
    b = MNISTDataModule(data_dir=str(mnist_root), seed=0).split_indices()
    c = MNISTDataModule(data_dir=str(mnist_root), seed=1).split_indices()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_limit_train(mnist_root):  # noqa: F811
    dm = MNISTDataModule(data_dir=str(mnist_root), limit_train=1000, batch_size=1000, shuffle=False)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 1000 and len(dm.val_set) == 10_000
    full = MNISTDataModule(data_dir=str(mnist_root)).split_indices()[0]
    assert torch.equal(dm.train_indices, full[:1000])


def test_default_data_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PL_ENERGY_DATA", str(tmp_path))
    assert MNISTDataModule().data_dir == str(tmp_path)
    monkeypatch.delenv("PL_ENERGY_DATA")
    assert MNISTDataModule().data_dir == "./data"
    assert MNISTDataModule().hparams["batch_size"] == 64


def _check_missing_message(err: Exception, raw) -> None:
    msg = str(err)
    assert "\n" not in msg
    for f in MNIST_FILES:
        assert f in msg
    assert str(raw) in msg


def test_missing_files_no_download(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(FileNotFoundError) as ei:
        dm.prepare_data()
    _check_missing_message(ei.value, (tmp_path / "MNIST" / "raw").resolve())
    with pytest.raises(FileNotFoundError):
        dm.setup()


def test_missing_files_download_fails(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", no_network)
    dm = MNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as ei:
        dm.prepare_data()
    _check_missing_message(ei.value, (tmp_path / "MNIST" / "raw").resolve())


# --- files as users have them (the real IDX format, written here) ---------------------------------
def _write_idx(path, magic: int, dims: tuple[int, ...], payload: bytes, packed: bool = True) -> None:
    import gzip

    data = b"".join(v.to_bytes(4, "big") for v in (magic, *dims)) + payload
    path.write_bytes(gzip.compress(data) if packed else data)


def _fake_mnist(root, packed: bool = True, images: int = 60_000, tests: int = 10_000):
    """The four files with the real headers and sizes (zero pixels, labels i % 10)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if packed else ""
    for split, count in (("train", images), ("t10k", tests)):
        _write_idx(raw / f"{split}-images-idx3-ubyte{suffix}", 2051, (count, 28, 28), bytes(count * 784), packed)
        _write_idx(raw / f"{split}-labels-idx1-ubyte{suffix}", 2049, (count,),
                   bytes(i % 10 for i in range(count)), packed)
    return raw


@pytest.mark.parametrize("packed", [True, False])
def test_valid_local_files_load_without_a_download_from_a_read_only_folder(tmp_path, packed):
    raw = _fake_mnist(tmp_path, packed)
    for path in [*raw.iterdir(), raw]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        dm = MNISTDataModule(data_dir=str(tmp_path), download=False, limit_train=10)
        dm.prepare_data()
        dm.setup()
        x, y = dm.test_set.tensors
        assert x.shape == (10_000, 784) and y[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
        assert sorted(p.name for p in raw.iterdir()) == sorted(p.name for p in raw.iterdir())  # nothing written
    finally:
        for path in [raw, *raw.iterdir()]:
            path.chmod(0o755)


def test_a_truncated_file_is_named(tmp_path):
    raw = _fake_mnist(tmp_path)
    target = raw / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-20])
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz is not a complete gzip file"):
        dm.setup("test")


def test_swapped_files_are_named(tmp_path):
    raw = _fake_mnist(tmp_path)
    images, labels = raw / "train-images-idx3-ubyte.gz", raw / "train-labels-idx1-ubyte.gz"
    data = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(data)
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz does not hold train-images.*swapped"):
        dm.setup("fit")


def test_a_short_file_is_named(tmp_path):
    raw = _fake_mnist(tmp_path, packed=False)
    target = raw / "train-labels-idx1-ubyte"
    target.write_bytes(target.read_bytes()[:-5])
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte holds 59995 bytes of data, expected 60000: it is truncated"):
        dm.setup("fit")
