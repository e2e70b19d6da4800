"""What makes a training epoch reproducible from any batch: a sampler that can start mid-epoch and
augmentation seeded by (seed, epoch, sample index).

With both, the batches after a resume are exactly those an uninterrupted run would have seen, and
they do not depend on the number of loader workers (a worker's own RNG never reaches a sample).
"""
import random
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler (shuffled by seed and epoch) that yields `(epoch, index)` and can skip ahead.

    The epoch travels with each index so that `PerSampleSeeded` sees it inside worker processes,
    which persistent workers would otherwise never learn of. `skip(n)` drops the first n indices
    of the next pass only: the samples this rank consumed before a mid-epoch checkpoint.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._skip = 0

    def skip(self, num_samples: int):
        self._skip = num_samples

    def __iter__(self):
        indices = list(super().__iter__())[self._skip:]
        self._skip = 0
        return iter([(self.epoch, index) for index in indices])


@contextmanager
def _seeded_rngs(seed: int):
    """Seed python, numpy and torch (CPU) RNGs for the block, then restore the states they had."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class PerSampleSeeded(Dataset):
    """Wraps a map-style dataset so sample `index` of epoch `epoch` is augmented from seed (seed, epoch, index).

    Indexed with the `(epoch, index)` pairs of ResumableDistributedSampler; a plain index means epoch 0.
    """

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):  # the wrapped dataset's attributes (classes, ...), as Subset users expect
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1, np.uint64)[0])
        with _seeded_rngs(seed):
            return self.dataset[index]
