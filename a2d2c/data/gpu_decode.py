"""ImageNet input pipeline with JPEG decoding and augmentation on the GPU.

The CPU DataLoader (PIL decode, RandomResizedCrop, flip) is what limits fast models on a GPU:
a 16-core host decodes a few thousand ImageNet JPEGs per second. Here the workers only read
file bytes; ``GpuImagePipeline`` decodes the batch with nvJPEG (``torchvision.io.decode_jpeg``
on a list, batched), then crops, resizes, flips and normalises on the device. On a CPU device it
runs the same steps on the CPU, which is how the tests exercise it.

Select it with ``dataset.decode=gpu`` (configs/dataset/imagenet.yaml).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from a2d2c.data.constants import IMAGENET_MEAN, IMAGENET_STD
from a2d2c.data.tolerant_folder import TolerantImageFolder
from a2d2c.errors import ConfigError

JPEG_SOI = b"\xff\xd8\xff"  # start-of-image marker and the first byte of the next marker


class NotAJpegError(OSError):
    """A file the device decoder cannot take: empty, or not a JPEG. An OSError, so bad_images applies."""


def read_jpeg(path: str) -> torch.Tensor:
    """The bytes of the JPEG file `path` as a uint8 tensor; NotAJpegError for an empty or non-JPEG file.

    The device decodes a whole batch in one call, which fails without naming the file; checking
    here, in the loader worker, names it (and lets bad_images=skip replace it).
    """
    data = Path(path).read_bytes()
    if not data:
        raise NotAJpegError("the file is empty")
    if not data.startswith(JPEG_SOI):
        raise NotAJpegError(f"not a JPEG: it starts with {data[:8]!r}, not {JPEG_SOI!r}; dataset.decode=gpu "
                            f"decodes JPEG only (convert the file or use dataset.decode=cpu)")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class EncodedImageFolder(TolerantImageFolder):
    """ImageFolder whose samples are the files' encoded JPEG bytes (a uint8 tensor) and the label.

    `bad_images` as for TolerantImageFolder: an empty or non-JPEG file fails naming it, or is replaced
    by the next readable sample and counted.
    """

    def __init__(self, root: str, bad_images: str = "fail"):
        super().__init__(str(Path(root).expanduser()), bad_images=bad_images, loader=read_jpeg)


def collate_encoded(batch) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Encoded images differ in length: keep them as a list."""
    data, labels = zip(*batch)
    return list(data), torch.tensor(labels)


class GpuImagePipeline:
    """Decode a list of JPEGs on ``device`` and apply the standard ImageNet transforms.

    train: RandomResizedCrop(image_size, scale=(0.08, 1)) + horizontal flip;
    eval: resize the short side to ``resize_size``, center crop ``image_size``.
    Returns a normalised float tensor B x 3 x image_size x image_size on ``device``.
    """

    def __init__(self, train: bool, image_size: int = 224, resize_size: int = 256,
                 scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.train = train
        self.image_size = image_size
        self.resize_size = resize_size
        self.scale, self.ratio = list(scale), list(ratio)
        self.mean, self.std = tuple(mean), tuple(std)

    def _crop(self, image: torch.Tensor) -> torch.Tensor:
        size = [self.image_size, self.image_size]
        if self.train:
            top, left, h, w = RandomResizedCrop.get_params(image, self.scale, self.ratio)
            return TF.resized_crop(image, top, left, h, w, size, antialias=True)
        image = TF.resize(image, [self.resize_size], antialias=True)
        return TF.center_crop(image, size)

    def __call__(self, encoded: List[torch.Tensor], device: torch.device) -> torch.Tensor:
        try:
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        except RuntimeError as e:
            # The loader checked each file's JPEG header, so one is truncated or corrupt further in; the
            # bytes no longer say which file they came from.
            raise ConfigError(f"a JPEG in a batch of {len(encoded)} failed to decode on {device} "
                              f"({' '.join(str(e).split())}); to name the file, run with dataset.decode=cpu "
                              f"(dataset.bad_images=fail stops at it, =skip skips it) or open each file with "
                              f"PIL.Image.open(path).load()") from e
        batch = torch.stack([self._crop(image) for image in images])
        if self.train:
            flip = torch.rand(batch.shape[0], device=device) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1) * 255
        return (batch.float() - mean) / std
