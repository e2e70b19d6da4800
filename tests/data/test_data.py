"""Datasets and loaders: the embedded split, on-disk formats, missing-data errors, exact evaluation shards."""
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from a2d2c.data import build_eval_loader, build_train_loader
from a2d2c.data.cifar import build_cifar100
from a2d2c.data.digits import Digits, _load_with_split
from a2d2c.data.imagenet import build_imagenet
from a2d2c.data.synthetic import SyntheticImages
from a2d2c.distributed.process_group import DistInfo
from a2d2c.errors import ConfigError


def test_digits_split_is_fixed_stratified_and_disjoint():
    train, test = Digits("train", image_size=8), Digits("test", image_size=8)
    assert (len(train), len(test)) == (1437, 360)  # 80/20 of scikit-learn's 1,797 digits
    counts = torch.bincount(test.targets, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # ~36 of each class: stratified
    _, labels, train_idx, test_idx = _load_with_split()
    assert not set(train_idx) & set(test_idx) and len(set(train_idx) | set(test_idx)) == len(labels)
    # At the native 8x8 size the test images are the scans themselves, standardised.
    scans = torch.from_numpy(load_digits().images).float()[test_idx]
    assert torch.corrcoef(torch.stack([scans.flatten(), test.images[:, 0].flatten()]))[0, 1] > 0.999
    again = Digits("test", image_size=8)
    assert torch.equal(again.images, test.images) and torch.equal(again.targets, test.targets)


def test_digits_are_three_channel_images_of_the_configured_size():
    train = Digits("train", image_size=16, augment=True)
    image, label = train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and 0 <= int(label) < 10
    assert torch.equal(image[0], image[1])
    test = Digits("test", image_size=16)
    assert torch.equal(test[3][0], test[3][0])  # no augmentation on the test split
    assert abs(train.images.mean().item()) < 0.05


def test_digits_rejects_unknown_split():
    with pytest.raises(ConfigError, match="'train' and 'test'"):
        Digits("val")


def test_synthetic_images_are_deterministic_per_index():
    ds = SyntheticImages(size=10, num_classes=7, image_size=12, seed=3)
    a, b = ds[4], ds[4]
    assert a[0].shape == (3, 12, 12) and torch.equal(a[0], b[0]) and int(a[1]) == int(b[1]) < 7
    assert not torch.equal(ds[5][0], a[0]) and len(ds) == 10


def test_missing_cifar100_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(ConfigError) as info:
        build_cifar100(str(tmp_path / "nowhere"), "train")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "dataset.download=true" in message and "\n" not in message


def test_imagenet_folder_layout_and_standard_transforms(tmp_path):
    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            for i in range(2):
                pixels = np.random.default_rng(i).integers(0, 255, (40 + 10 * i, 60, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.JPEG")
    train = build_imagenet(str(tmp_path), "train", image_size=32, resize_size=36)
    val = build_imagenet(str(tmp_path), "val", image_size=32, resize_size=36)
    assert len(train) == len(val) == 4 and train.classes == ["n01", "n02"]
    image, label = val[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 1
    assert torch.equal(val[0][0], val[0][0])  # deterministic eval transform
    with pytest.raises(ConfigError, match="ImageFolder"):
        build_imagenet(str(tmp_path / "missing"), "val")


@pytest.mark.parametrize("world_size", [1, 3])
def test_eval_shards_cover_every_sample_exactly_once(world_size):
    dataset = SyntheticImages(size=10, num_classes=3, image_size=2)
    seen = []
    for rank in range(world_size):
        loader = build_eval_loader(dataset, 4, DistInfo(rank, world_size, rank))
        seen += [i for i in loader.sampler]
    assert sorted(seen) == list(range(10))


def test_train_order_depends_only_on_seed_and_epoch():
    dataset = SyntheticImages(size=20, num_classes=3, image_size=2)
    def order(epoch, seed=0):
        loader = build_train_loader(dataset, 4, DistInfo(), seed)
        loader.sampler.set_epoch(epoch)
        torch.manual_seed(epoch + 100)  # the global RNG must not matter
        return list(loader.sampler)
    assert order(1) == order(1) and order(1) != order(2) and order(1) != order(1, seed=5)
