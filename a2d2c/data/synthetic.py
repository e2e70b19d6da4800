"""Random images of any size and class count, for smoke tests and throughput benchmarks."""
import torch
from torch.utils.data import Dataset


class SyntheticImages(Dataset):
    """Sample i is the same on every call and every worker: it is drawn from a generator seeded by (seed, i)."""

    def __init__(self, size: int = 1024, num_classes: int = 1000, image_size: int = 224, channels: int = 3, seed: int = 0):
        self.size, self.num_classes, self.seed = size, num_classes, seed
        self.shape = (channels, image_size, image_size)

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        image = torch.randn(self.shape, generator=generator)
        target = torch.randint(self.num_classes, (), generator=generator)
        return image, target
