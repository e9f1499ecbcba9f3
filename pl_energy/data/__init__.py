"""Lightning DataModules: MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100 and ImageNet."""

from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .imagenet import HIGH_LEVEL_27, ImageNetDataModule, load_category_mapping
from .loading import default_data_dir
from .mnist import FashionMNISTDataModule, MNISTDataModule

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule", "FashionMNISTDataModule", "HIGH_LEVEL_27",
           "ImageNetDataModule", "MNISTDataModule", "default_data_dir", "load_category_mapping"]
