"""The embedded default dataset: scikit-learn's bundled handwritten digits (real 8x8 scans, 10 classes).

1,797 images ship inside scikit-learn, so a first run needs no download. The train/test split is
fixed (80/20, stratified by class, seed 0) so results from different runs and machines compare.
"""
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset
from torchvision.transforms import v2

from a2d2c.errors import ConfigError

SPLIT_SEED = 0
TEST_FRACTION = 0.2
PIXEL_MAX = 16.0  # the scans are 4-bit: values 0..16


def _load_with_split():
    digits = load_digits()
    train_idx, test_idx = train_test_split(range(len(digits.target)), test_size=TEST_FRACTION,
                                           stratify=digits.target, random_state=SPLIT_SEED)
    images = torch.from_numpy(digits.images).float() / PIXEL_MAX
    labels = torch.from_numpy(digits.target).long()
    return images, labels, sorted(train_idx), sorted(test_idx)


class Digits(Dataset):
    """3-channel tensors of `image_size`², normalised with the train split's mean/std.

    Images are resized once here (bilinear) and kept in memory; the train split adds a random
    translation of up to `max_shift` pixels (as a crop of a padded image).
    """

    def __init__(self, split: str = "train", image_size: int = 16, augment: bool = False, max_shift: int = 2):
        if split not in ("train", "test"):
            raise ConfigError(f"digits has splits 'train' and 'test', not {split!r}")
        images, labels, train_idx, test_idx = _load_with_split()
        mean, std = images[train_idx].mean(), images[train_idx].std()
        index = train_idx if split == "train" else test_idx
        images = (images[index] - mean) / std
        images = F.interpolate(images[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False)
        self.images = images.expand(-1, 3, -1, -1).contiguous()
        self.targets = labels[index]
        self.classes = [str(d) for d in range(10)]
        self.transform = v2.RandomCrop(image_size, padding=max_shift) if augment and max_shift > 0 else None

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[i]
