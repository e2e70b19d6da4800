"""ImageNet-1k as an ImageFolder tree: `<root>/train/<wnid>/*.JPEG` and `<root>/val/<wnid>/*.JPEG`."""
from pathlib import Path

import torch
from torchvision.transforms import v2

from a2d2c.data.constants import IMAGENET_MEAN, IMAGENET_STD
from a2d2c.data.gpu_decode import EncodedImageFolder
from a2d2c.data.tolerant_folder import TolerantImageFolder
from a2d2c.errors import ConfigError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "imagenet_transforms", "build_imagenet"]


def imagenet_transforms(train: bool, image_size: int = 224, resize_size: int = 256):
    """The standard recipe: RandomResizedCrop + flip for training; resize-256 / center-crop-224 for eval."""
    if train:
        spatial = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        spatial = [v2.Resize(resize_size, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose([v2.ToImage(), *spatial, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def build_imagenet(root: str, split: str = "train", image_size: int = 224, resize_size: int = 256,
                   decode: str = "cpu", bad_images: str = "fail"):
    """decode="cpu": PIL + transforms in the loader workers; "gpu": the workers only read the
    JPEG bytes and the task decodes and augments them on the device (a2d2c/data/gpu_decode.py)."""
    if decode not in ("cpu", "gpu"):
        raise ConfigError(f"dataset.decode={decode!r} is not valid; use cpu or gpu")
    folder = Path(root).expanduser() / split
    if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
        raise ConfigError(f"ImageNet {split} split not found: {folder} has no class folders; set dataset.root to a "
                          f"folder with train/ and val/ in ImageFolder layout (val sorted into class folders)")
    # bad_images: "fail" stops at the first unreadable file with its name; "skip" counts and replaces it.
    if decode == "gpu":
        return EncodedImageFolder(str(folder), bad_images=bad_images)
    return TolerantImageFolder(str(folder), transform=imagenet_transforms(split == "train", image_size, resize_size),
                               bad_images=bad_images)
