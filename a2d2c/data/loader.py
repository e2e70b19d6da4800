"""DataLoaders for training and exact evaluation, single-process or under DDP."""
import torch
from torch.utils.data import DataLoader, Sampler

from a2d2c.data.resumable import PerSampleSeeded, ResumableDistributedSampler
from a2d2c.distributed.process_group import DistInfo


class ShardedEvalSampler(Sampler):
    """Rank r reads samples r, r + world, r + 2·world, ... — every sample exactly once over all ranks.

    DistributedSampler pads the last shard with repeats, which would count some samples twice.
    """

    def __init__(self, dataset_size: int, dist_info: DistInfo):
        self.indices = range(dist_info.rank, dataset_size, dist_info.world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class EpochLoader(DataLoader):
    """A training DataLoader whose order is a function of (seed, epoch), resumable inside an epoch.

    `ordering` is what draws the order: the sampler, or a batch sampler that owns it (aspect-ratio
    grouping, data/aspect_ratio.py). The loop calls `start_epoch` before each epoch, whichever it is.
    """

    def __init__(self, *args, ordering, **kwargs):
        super().__init__(*args, **kwargs)
        self.ordering = ordering

    def start_epoch(self, epoch: int, skip_samples: int = 0) -> None:
        """Shuffle for `epoch`; a resume mid-epoch starts after this process's first `skip_samples`."""
        self.ordering.set_epoch(epoch)
        self.ordering.skip(skip_samples)


def build_train_loader(dataset, batch_size: int, dist_info: DistInfo, seed: int, num_workers: int = 0,
                       pin_memory: bool = False, collate_fn=None) -> EpochLoader:
    """Shuffled by (seed, epoch) — call `loader.start_epoch(epoch)` — so a resumed run sees the same order.

    Augmentation is seeded per (seed, epoch, sample), and `loader.start_epoch(epoch, n)` starts the
    epoch after its first n samples: a mid-epoch resume replays the rest of the epoch exactly.
    `batch_size` is per process. The last incomplete batch is dropped (mixup pairs samples in a batch).
    """
    sampler = ResumableDistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                          shuffle=True, seed=seed, drop_last=True)
    # Its own generator: creating an epoch's iterator then draws the worker base seed from it, not
    # from the global RNG, whose state a mid-epoch checkpoint captures after that draw.
    return EpochLoader(PerSampleSeeded(dataset, seed), batch_size=batch_size, sampler=sampler,
                       num_workers=num_workers, pin_memory=pin_memory, drop_last=True, collate_fn=collate_fn,
                       persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed),
                       ordering=sampler)


def build_eval_loader(dataset, batch_size: int, dist_info: DistInfo, num_workers: int = 0,
                      pin_memory: bool = False, collate_fn=None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardedEvalSampler(len(dataset), dist_info),
                      num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate_fn,
                      persistent_workers=num_workers > 0)
