"""CIFAR-100 from torchvision's on-disk format (`<root>/cifar-100-python/`)."""
from pathlib import Path

import torch
from torchvision import datasets
from torchvision.transforms import v2

from a2d2c.errors import ConfigError

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def cifar_transforms(train: bool, image_size: int = 32, padding: int = 4):
    """The usual CIFAR augmentation: pad-and-crop plus horizontal flip for training."""
    augment = [v2.RandomCrop(image_size, padding=padding), v2.RandomHorizontalFlip()] if train else []
    resize = [] if image_size == 32 else [v2.Resize(image_size, antialias=True)]
    return v2.Compose([v2.ToImage(), *resize, *augment, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(CIFAR100_MEAN, CIFAR100_STD)])


def build_cifar100(root: str, split: str = "train", download: bool = False, image_size: int = 32):
    if split not in ("train", "test"):
        raise ConfigError(f"cifar100 has splits 'train' and 'test', not {split!r}")
    root = Path(root).expanduser()
    if not download and not (root / "cifar-100-python").is_dir():
        raise ConfigError(f"CIFAR-100 not found: no {root / 'cifar-100-python'}; set dataset.root to the folder that "
                          f"holds it, or add dataset.download=true to fetch it there")
    try:
        return datasets.CIFAR100(str(root), train=split == "train", download=download,
                                 transform=cifar_transforms(split == "train", image_size))
    except RuntimeError as e:  # torchvision's integrity check: files present but damaged or incomplete
        raise ConfigError(f"CIFAR-100 at {root} is unreadable ({e}); delete it and rerun with dataset.download=true") from e
