"""ILSVRC-2012 (ImageNet-1k) as a LightningDataModule.

Layouts (``layout="auto"`` detects them; ``"torchvision"`` / ``"folder"`` force one):

* ``"torchvision"``: torchvision's :class:`~torchvision.datasets.ImageNet` root,
  i.e. ``root/meta.bin`` (devkit-derived; ``torch.save((wnid_to_classes, None),
  root / "meta.bin")`` is enough offline) plus ``root/train/<wnid>/*.JPEG`` and
  ``root/val/<wnid>/*.JPEG``. Chosen by ``"auto"`` when ``root/meta.bin`` exists.
* ``"folder"``: a plain ``root/train/<wnid>/*.JPEG``, ``root/val/<wnid>/*.JPEG``
  tree (ImageFolder style). Class folders must be ILSVRC-2012 wnids.

The ``val`` split serves as validation *and* test set (ImageNet's test labels are
not public).

Labels (``classes``):

* ``"ilsvrc1000"``: 0..999, the index of the wnid in the sorted list of the
  1000 ILSVRC-2012 wnids (the usual class index), whatever subset of class
  folders is present.
* ``"high_level_27"``: index in the alphabetical list of ImageNet's 27
  high-level categories (:data:`HIGH_LEVEL_27`). Each ILSVRC class maps to its
  most specific category (the one deepest in WordNet 3.0, depth = longest
  hypernym path from ``entity``) among its ``@``/``@i`` hypernym ancestors; the
  mapping ships in ``imagenet_high_level_27.json`` (made by
  ``scripts/derive_imagenet_categories.py``). 875 classes map into 23 of the
  27 categories (nothing is most specifically animal, plant, sport or tree);
  125 classes (mostly containers, balls, phones, ...) fall under none.
  ``unmapped="drop"`` (default) leaves their images out of the data set;
  ``unmapped="other"`` keeps them with an extra label 27 (``num_classes`` 28).

Preprocessing, default = Song et al. 2020, appendix A.9: grayscale, resize to
224x224 (aspect ratio not kept), ``ToTensor`` ([0, 1]), flattened to 50176
floats for a fully-connected net. Options:

* ``grayscale=False``: RGB (3 channels; 150528 floats flattened).
* ``flatten=False``: ``CxHxW`` images.
* ``image_size``: side of the square output (224).
* ``augment=True``: train ``RandomResizedCrop(image_size)`` +
  ``RandomHorizontalFlip``; val ``Resize(image_size * 256 // 224)`` +
  ``CenterCrop(image_size)``.
* ``normalize=True`` (default False: values stay in [0, 1]): RGB uses the
  usual ImageNet mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225);
  grayscale uses their luminance-weighted (0.299 R + 0.587 G + 0.114 B)
  equivalents, mean 0.459 / std 0.226 (:data:`GRAY_MEAN`, :data:`GRAY_STD`;
  the std is the weighted channel std, an approximation of the true
  grayscale std).

Speed: ``num_workers``, ``pin_memory``, ``persistent_workers``; ``limit=N``
keeps at most N images per split (a seeded random subset, so that all classes
can appear); ``fast_decode=True`` lets PIL's JPEG decoder downscale by 1/2,
1/4 or 1/8 while decoding when the target size allows it (never below the
size the resize needs; not used for ``RandomResizedCrop``).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import MissingFile, RefusedValue
from .loading import SplitDataModule
from .loading import default_data_dir

MAPPING_FILE = Path(__file__).with_name("imagenet_high_level_27.json")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LUMA = (0.299, 0.587, 0.114)
GRAY_MEAN = round(sum(w * m for w, m in zip(_LUMA, IMAGENET_MEAN)), 3)  # 0.459
GRAY_STD = round(sum(w * s for w, s in zip(_LUMA, IMAGENET_STD)), 3)  # 0.226
IMG_EXTENSIONS = (".jpeg", ".jpg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@lru_cache(maxsize=1)
def load_category_mapping() -> dict[str, Any]:
    """The shipped mapping: ``categories`` (27 names, label order), ``ilsvrc_wnids``
    (1000, class-index order), ``wnid_to_category`` (mapped wnids) and ``unmapped``."""
    with open(MAPPING_FILE, encoding="utf-8") as f:
        return json.load(f)


def ilsvrc_wnids() -> list[str]:
    """The 1000 ILSVRC-2012 wnids in class-index (sorted) order."""
    return list(load_category_mapping()["ilsvrc_wnids"])


HIGH_LEVEL_27: tuple[str, ...] = tuple(load_category_mapping()["categories"])


class _Flatten:
    """Picklable ``torch.flatten`` for transforms (works with worker processes)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1)


class _PILLoader:
    """Open an image as ``mode``; optionally let the JPEG decoder downscale (``draft``)."""

    def __init__(self, mode: str, draft_size: int | None) -> None:
        self.mode = mode
        self.draft_size = draft_size

    def __call__(self, path: str) -> Image.Image:
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                if self.draft_size is not None:
                    img.draft("RGB", (self.draft_size, self.draft_size))
                if img.mode.startswith("I;16") or (img.mode == "I" and img.getextrema()[1] > 255):
                    # 16-bit pixels: PIL's convert would clip them at 255, so every pixel above
                    # 255 turned white; scale 0..65535 to 0..255 instead
                    img = img.convert("I").point(lambda value: value * (1 / 256)).convert("L")
                return img.convert(self.mode)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # truncated, corrupt, not an image
            raise RefusedValue(f"cannot read the image {path}: {exc}") from exc


class ImageListDataset(Dataset):
    """``(path, label)`` samples, loaded with ``loader`` and transformed with ``transform``."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        transform: Callable | None = None,
        loader: Callable[[str], Any] | None = None,
    ) -> None:
        self.samples = samples
        self.targets = [t for _, t in samples]
        self.transform = transform
        self.loader = loader or _PILLoader("RGB", None)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        img = self.loader(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def _layout_hint(root: Path) -> str:
    return (
        f"expected {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG (folder layout), "
        f"plus {root}/meta.bin for torchvision's ImageNet layout"
    )


class ImageNetDataModule(SplitDataModule):
    """ILSVRC-2012 train/val for energy-based and backprop models (see module docstring).

    Args:
        root: ImageNet root (default ``$PL_ENERGY_DATA/imagenet`` or ``./data/imagenet``).
        layout: ``"auto"``, ``"torchvision"`` (needs ``meta.bin``) or ``"folder"``.
        classes: ``"ilsvrc1000"`` or ``"high_level_27"`` labels.
        unmapped: for ``high_level_27``: ``"drop"`` images of the ~125 classes outside all
            27 categories, or put them in an extra ``"other"`` class (label 27).
        grayscale: 1 channel (luminance) instead of RGB.
        flatten: return flat vectors (50176 = 224*224 for grayscale) instead of images.
        image_size: output side length.
        augment: random-resized-crop + flip for train, resize + center-crop for val.
        normalize: subtract mean / divide by std (ImageNet stats; luminance-weighted for gray).
        batch_size: batch size of all loaders.
        num_workers: DataLoader worker processes (JPEG decoding is the bottleneck).
        pin_memory: pin host memory (useful when training on a GPU).
        persistent_workers: keep workers alive between epochs (only when ``num_workers > 0``).
        limit: keep at most this many images per split (seeded random subset).
        seed: seed of the ``limit`` subset.
        shuffle: shuffle the train loader.
        fast_decode: JPEG draft-mode decoding at reduced size when the resize allows it.

    Attributes: ``num_classes``, ``class_names``, ``input_shape`` (e.g. ``(50176,)`` or
    ``(1, 224, 224)``), ``input_dim`` (e.g. 50176) and, after :meth:`setup`, ``layout_used``.
    """

    def __init__(
        self,
        root: str | None = None,
        layout: Literal["auto", "torchvision", "folder"] = "auto",
        classes: Literal["ilsvrc1000", "high_level_27"] = "ilsvrc1000",
        unmapped: Literal["drop", "other"] = "drop",
        grayscale: bool = True,
        flatten: bool = True,
        image_size: int = 224,
        augment: bool = False,
        normalize: bool = False,
        batch_size: int = 64,
        num_workers: int = 4,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        limit: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        fast_decode: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if layout not in ("auto", "torchvision", "folder"):
            raise ValueError(f"layout must be 'auto', 'torchvision' or 'folder', got {layout!r}")
        if classes not in ("ilsvrc1000", "high_level_27"):
            raise ValueError(f"classes must be 'ilsvrc1000' or 'high_level_27', got {classes!r}")
        if unmapped not in ("drop", "other"):
            raise ValueError(f"unmapped must be 'drop' or 'other', got {unmapped!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be a positive int or None, got {limit}")
        self.root = Path(root) if root else Path(default_data_dir()) / "imagenet"
        self.layout = layout
        self.classes = classes
        self.unmapped = unmapped
        self.grayscale = grayscale
        self.flatten = flatten
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int (pixels), got {image_size!r}")
        self.image_size = image_size
        self.augment = augment
        self.normalize = normalize
        self.set_loader_options(batch_size, num_workers, pin_memory, persistent_workers, shuffle)
        self.limit = limit
        self.seed = seed
        self.fast_decode = fast_decode

        channels = 1 if grayscale else 3
        self.image_shape: tuple[int, int, int] = (channels, image_size, image_size)
        self.input_dim: int = channels * image_size * image_size
        self.input_shape: tuple[int, ...] = (self.input_dim,) if flatten else self.image_shape
        if classes == "ilsvrc1000":
            self.class_names: list[str] = ilsvrc_wnids()
        else:
            self.class_names = list(HIGH_LEVEL_27) + (["other"] if unmapped == "other" else [])
        self.num_classes: int = len(self.class_names)
        self.layout_used: str | None = None
        self.train_set: ImageListDataset | None = None
        self.val_set: ImageListDataset | None = None

    # ------------------------------------------------------------- transforms
    def _transform(self, train: bool) -> Callable:
        from torchvision import transforms as T

        s = self.image_size
        if self.augment and train:
            ops: list[Callable] = [T.RandomResizedCrop(s), T.RandomHorizontalFlip()]
        elif self.augment:
            ops = [T.Resize(s * 256 // 224), T.CenterCrop(s)]
        else:
            ops = [T.Resize((s, s))]
        ops.append(T.ToTensor())
        if self.normalize:
            if self.grayscale:
                ops.append(T.Normalize((GRAY_MEAN,), (GRAY_STD,)))
            else:
                ops.append(T.Normalize(IMAGENET_MEAN, IMAGENET_STD))
        if self.flatten:
            ops.append(_Flatten())
        return T.Compose(ops)

    def _image_reader(self, train: bool) -> _PILLoader:
        draft = None
        if self.fast_decode:
            if not self.augment:
                draft = self.image_size
            elif not train:
                draft = self.image_size * 256 // 224
        return _PILLoader("L" if self.grayscale else "RGB", draft)

    # ---------------------------------------------------------------- scanning
    def detect_layout(self) -> str:
        """Check ``root`` and return ``"torchvision"`` or ``"folder"`` (one-line errors otherwise)."""
        root = self.root
        if not root.is_dir():
            raise MissingFile(f"ImageNet root {root} does not exist: {_layout_hint(root)}")
        if self.layout == "torchvision" and not (root / "meta.bin").is_file():
            raise MissingFile(
                f"ImageNet root {root} has no meta.bin, needed by layout='torchvision': create it with "
                f"torch.save((wnid_to_classes, None), '{root}/meta.bin') or use layout='folder'"
            )
        if self.layout != "auto":
            return self.layout
        return "torchvision" if (root / "meta.bin").is_file() else "folder"

    def _split_dir(self, split: str) -> Path:
        d = self.root / split
        if not d.is_dir():
            raise MissingFile(f"ImageNet root {self.root} has no {split}/ folder: {_layout_hint(self.root)}")
        return d

    def _scan(self, split: str, layout: str) -> list[tuple[str, str]]:
        """``(path, wnid)`` for every image of ``split``."""
        from torchvision.datasets.folder import make_dataset

        split_dir = self._split_dir(split)
        all_wnids = set(ilsvrc_wnids())
        if layout == "torchvision":
            from torchvision.datasets import ImageNet

            try:
                ds = ImageNet(str(self.root), split=split, loader=lambda p: p)
            except Exception as exc:  # malformed meta.bin, missing wnid in meta.bin, empty folder ...
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ValueError(
                    f"torchvision could not read ImageNet root {self.root} ({type(exc).__name__}: {msg}): "
                    f"{_layout_hint(self.root)}, meta.bin = torch.save((wnid_to_classes, None), ...)"
                ) from exc
            samples = [(path, ds.wnids[t]) for path, t in ds.samples]
            wnids = list(ds.wnids)
        else:
            wnids = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
            if not wnids:
                raise MissingFile(
                    f"ImageNet folder {split_dir} has no class folders: {_layout_hint(self.root)}"
                )
            class_to_idx = {w: i for i, w in enumerate(wnids)}
            pairs = make_dataset(str(split_dir), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
            samples = [(path, wnids[t]) for path, t in pairs]
        bad = [w for w in wnids if w not in all_wnids]
        if bad:
            raise RefusedValue(
                f"ImageNet folder {split_dir} has {len(bad)} class folder(s) that are not ILSVRC-2012 wnids "
                f"(e.g. {bad[0]!r}): {_layout_hint(self.root)}"
            )
        if not samples:
            raise MissingFile(f"ImageNet folder {split_dir} has no images: {_layout_hint(self.root)}")
        return samples

    def _label_map(self) -> dict[str, int]:
        """wnid -> label; wnids absent from the map are dropped."""
        wnids = ilsvrc_wnids()
        if self.classes == "ilsvrc1000":
            return {w: i for i, w in enumerate(wnids)}
        m = load_category_mapping()
        index = {c: i for i, c in enumerate(m["categories"])}
        labels = {w: index[c] for w, c in m["wnid_to_category"].items()}
        if self.unmapped == "other":
            labels.update({w: len(index) for w in m["unmapped"]})
        return labels

    def _build(self, split: str, layout: str) -> ImageListDataset:
        labels = self._label_map()
        samples = [(p, labels[w]) for p, w in self._scan(split, layout) if w in labels]
        if self.limit is not None and len(samples) > self.limit:
            gen = torch.Generator().manual_seed(self.seed)
            keep = sorted(torch.randperm(len(samples), generator=gen)[: self.limit].tolist())
            samples = [samples[i] for i in keep]
        train = split == "train"
        return ImageListDataset(samples, transform=self._transform(train), loader=self._image_reader(train))

    def setup(self, stage: str | None = None) -> None:
        layout = self.detect_layout()
        self.layout_used = layout
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._build("train", layout)
        if self.val_set is None:  # fit, validate, test, predict: all use val/
            self.val_set = self._build("val", layout)
        self.test_set = self.val_set
