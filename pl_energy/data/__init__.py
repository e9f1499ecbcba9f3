"""Lightning DataModules: :class:`MNISTDataModule` and :class:`ImageNetDataModule`."""

from .imagenet import HIGH_LEVEL_27, ImageNetDataModule, load_category_mapping
from .mnist import MNISTDataModule

__all__ = ["HIGH_LEVEL_27", "ImageNetDataModule", "MNISTDataModule", "load_category_mapping"]
