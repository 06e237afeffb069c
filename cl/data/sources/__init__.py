"""Real dataset loaders (CIFAR-10/100, ImageNet-R, DomainNet, Tiny ImageNet, ImageNet-100) in standard layouts.

Each ``load_<name>(data_dir, image_size, download, augment, mean, std)`` checks that the files exist before any heavy
work (raising :class:`DatasetNotFoundError` with the expected path and how to get the data) and returns
:class:`SplitDatasets`. Importing this package does not import torch or torchvision.
"""

from cl.data.sources.base import SplitDatasets
from cl.data.sources.cifar import load_cifar10, load_cifar100
from cl.data.sources.domainnet import load_domainnet
from cl.data.sources.errors import DatasetNotFoundError
from cl.data.sources.imagenet100 import load_imagenet100
from cl.data.sources.imagenet_r import load_imagenet_r
from cl.data.sources.tiny_imagenet import load_tiny_imagenet
from cl.data.sources.transforms import build_transforms

__all__ = [
    "DatasetNotFoundError",
    "SplitDatasets",
    "build_transforms",
    "load_cifar10",
    "load_cifar100",
    "load_domainnet",
    "load_imagenet100",
    "load_imagenet_r",
    "load_tiny_imagenet",
]
