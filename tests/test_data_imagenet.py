from __future__ import annotations

import json

import pytest
import torch

from pl_energy.data import HIGH_LEVEL_27, ImageNetDataModule, load_category_mapping
from pl_energy.data.imagenet import MAPPING_FILE

try:  # tests/ as a package or as a plain folder on sys.path (pytest's default rootdir import)
    from .data_fixtures import (  # noqa: F401  (fixtures)
        CHURCH, FAKE_WNIDS, IMAGES_PER_CLASS, TABBY, TENCH, TRAILER_TRUCK, UNMAPPED,
        imagenet_folder, imagenet_torchvision, write_jpeg_tree,
    )
except ImportError:
    from data_fixtures import (  # noqa: F401  (fixtures)
        CHURCH, FAKE_WNIDS, IMAGES_PER_CLASS, TABBY, TENCH, TRAILER_TRUCK, UNMAPPED,
        imagenet_folder, imagenet_torchvision, write_jpeg_tree,
    )

CATEGORIES = [
    "amphibian", "animal", "appliance", "bird", "covering", "device", "fabric", "fish", "flower",
    "food", "fruit", "fungus", "furniture", "geological formation", "invertebrate", "mammal",
    "musical instrument", "person", "plant", "reptile", "sport", "structure", "tool", "tree",
    "utensil", "vegetable", "vehicle",
]
SANITY = {TENCH: "fish", TABBY: "mammal", CHURCH: "structure", TRAILER_TRUCK: "vehicle"}


def make(root, **kw) -> ImageNetDataModule:
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 4)
    dm = ImageNetDataModule(root=str(root), **kw)
    dm.setup()
    return dm


def all_batches(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


# ------------------------------------------------------------------ the mapping
def test_mapping_file_consistent():
    m = json.loads(MAPPING_FILE.read_text())
    assert m["categories"] == CATEGORIES == list(HIGH_LEVEL_27)
    assert len(set(m["categories"])) == 27  # each category named once
    wnids = m["ilsvrc_wnids"]
    assert len(wnids) == 1000 and wnids == sorted(set(wnids))
    mapped, unmapped = m["wnid_to_category"], m["unmapped"]
    # every wnid it claims is a real class, mapped xor unmapped, together all 1000
    assert set(mapped) | set(unmapped) == set(wnids)
    assert not set(mapped) & set(unmapped)
    assert set(mapped.values()) <= set(CATEGORIES)
    assert 100 <= len(unmapped) <= 200
    used = set(mapped.values())
    assert used == set(CATEGORIES) - {"animal", "plant", "sport", "tree"}
    assert len(used) == 23
    for wnid, cat in SANITY.items():
        assert mapped[wnid] == cat
    assert UNMAPPED in unmapped
    assert load_category_mapping() == m


# ---------------------------------------------------------------- the datasets
@pytest.mark.parametrize("layout_fixture", ["imagenet_folder", "imagenet_torchvision"])
def test_default_gray_flat_ilsvrc_labels(layout_fixture, request):
    root = request.getfixturevalue(layout_fixture)
    dm = make(root)
    assert dm.layout_used == ("torchvision" if layout_fixture == "imagenet_torchvision" else "folder")
    assert dm.num_classes == 1000 and dm.input_dim == 50176 and dm.input_shape == (50176,)
    assert len(dm.train_set) == IMAGES_PER_CLASS["train"] * len(FAKE_WNIDS)
    assert len(dm.val_set) == IMAGES_PER_CLASS["val"] * len(FAKE_WNIDS)
    x, y = all_batches(dm.train_dataloader())
    assert x.shape == (len(dm.train_set), 50176) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    wnids = load_category_mapping()["ilsvrc_wnids"]
    assert set(y.tolist()) == {wnids.index(w) for w in FAKE_WNIDS}
    assert {0, 281, 497, 867} <= set(y.tolist())  # tench, tabby, church, trailer truck
    _, yv = all_batches(dm.test_dataloader())
    assert sorted(yv.tolist()) == sorted(wnids.index(w) for w in FAKE_WNIDS for _ in range(2))


@pytest.mark.parametrize("layout", ["folder", "torchvision"])
def test_high_level_27_drops_unmapped(layout, imagenet_folder, imagenet_torchvision):  # noqa: F811
    root = imagenet_torchvision if layout == "torchvision" else imagenet_folder
    dm = make(root, classes="high_level_27", layout=layout)
    assert dm.num_classes == 27 and dm.class_names == CATEGORIES
    assert len(dm.train_set) == IMAGES_PER_CLASS["train"] * 4  # the unmapped class is dropped
    _, y = all_batches(dm.val_dataloader())
    assert sorted(set(y.tolist())) == sorted(CATEGORIES.index(c) for c in SANITY.values())
    assert all(UNMAPPED not in p for p, _ in dm.train_set.samples + dm.val_set.samples)


def test_high_level_27_other(imagenet_folder):  # noqa: F811
    dm = make(imagenet_folder, classes="high_level_27", unmapped="other")
    assert dm.num_classes == 28
    assert len(dm.train_set) == IMAGES_PER_CLASS["train"] * len(FAKE_WNIDS)
    assert 27 in dm.train_set.targets


def test_image_shapes(imagenet_folder):  # noqa: F811
    dm = make(imagenet_folder, flatten=False)
    assert dm.input_shape == (1, 224, 224)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 224, 224)
    dm = make(imagenet_folder, flatten=False, grayscale=False)
    assert dm.input_shape == (3, 224, 224) and dm.input_dim == 3 * 224 * 224
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 224, 224)
    dm = make(imagenet_folder, grayscale=False)
    assert dm.train_set[0][0].shape == (3 * 224 * 224,)


def test_augment_normalize(imagenet_folder):  # noqa: F811
    dm = make(imagenet_folder, flatten=False, grayscale=False, augment=True, normalize=True, image_size=32)
    assert dm.train_set[0][0].shape == (3, 32, 32) and dm.val_set[0][0].shape == (3, 32, 32)
    assert dm.val_set[0][0].min() < 0  # normalised
    dm = make(imagenet_folder, flatten=False, normalize=True, fast_decode=False)
    x = dm.val_set[0][0]
    assert x.shape == (1, 224, 224) and x.min() < 0


def test_fast_decode_close_to_plain(imagenet_folder):  # noqa: F811
    a = make(imagenet_folder, image_size=16).val_set[0][0]
    b = make(imagenet_folder, image_size=16, fast_decode=False).val_set[0][0]
    assert a.shape == b.shape == (256,)
    assert (a - b).abs().mean() < 0.1


def test_limit(imagenet_folder):  # noqa: F811
    dm = make(imagenet_folder, limit=4)
    assert len(dm.train_set) == 4 and len(dm.val_set) == 4
    again = make(imagenet_folder, limit=4)
    assert again.train_set.samples == dm.train_set.samples
    assert dm.hparams["limit"] == 4


# ---------------------------------------------------------------------- errors
def _one_line(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg
    return msg


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        make(tmp_path / "nope")
    _one_line(ei, "does not exist", "train/<wnid>/*.JPEG")


def test_missing_train_folder(tmp_path):
    (tmp_path / "val" / TENCH).mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as ei:
        make(tmp_path)
    _one_line(ei, f"ImageNet root {tmp_path} has no train/ folder", "train/<wnid>/*.JPEG", "meta.bin")


def test_malformed_folders(tmp_path):
    write_jpeg_tree(tmp_path / "a", wnids=(TENCH,))
    (tmp_path / "a" / "train" / "cats").mkdir()
    with pytest.raises(ValueError) as ei:
        make(tmp_path / "a")
    _one_line(ei, "not ILSVRC-2012 wnids", "'cats'")
    (tmp_path / "b" / "train").mkdir(parents=True)
    (tmp_path / "b" / "val").mkdir()
    with pytest.raises(FileNotFoundError) as ei:
        make(tmp_path / "b")
    _one_line(ei, "has no class folders")
    (tmp_path / "c" / "train" / TENCH).mkdir(parents=True)
    (tmp_path / "c" / "val" / TENCH).mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as ei:
        make(tmp_path / "c")
    _one_line(ei, "has no images")


def test_torchvision_layout_errors(tmp_path):
    write_jpeg_tree(tmp_path, wnids=(TENCH,))
    with pytest.raises(FileNotFoundError) as ei:
        make(tmp_path, layout="torchvision")
    _one_line(ei, "no meta.bin", "torch.save")
    (tmp_path / "meta.bin").write_bytes(b"not a pickle")
    with pytest.raises(ValueError) as ei:
        make(tmp_path)
    _one_line(ei, "torchvision could not read")


# ------------------------------------------------------------------ files that are not as expected
def test_a_truncated_jpeg_is_named(tmp_path):
    root = write_jpeg_tree(tmp_path / "imagenet")
    broken = sorted((root / "train" / FAKE_WNIDS[0]).iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:200])
    dm = make(root, augment=False)
    index = next(i for i, (path, _) in enumerate(dm.train_set.samples) if path == str(broken))
    with pytest.raises(ValueError, match=f"cannot read the image {broken}"):
        dm.train_set[index]


def test_sixteen_bit_pngs_keep_their_contrast(tmp_path):
    """A 16-bit grey PNG (0..65535) used to be clipped at 255 and load almost white."""
    import numpy as np
    from PIL import Image

    from pl_energy.data.imagenet import _PILLoader

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    loaded = np.asarray(_PILLoader("L", None)(str(path)), dtype=np.float64)
    np.testing.assert_allclose(loaded, ramp / 256, atol=1.0)  # 8-bit: within one level of v / 256


@pytest.mark.parametrize("size", [0, -3, 2.5])
def test_a_bad_image_size_is_refused(tmp_path, size):
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        ImageNetDataModule(root=str(tmp_path), image_size=size)
