"""DataLoaders for training and exact evaluation, single-process or under DDP."""
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from a2d2c.utils.distributed import DistInfo


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


def build_train_loader(dataset, batch_size: int, dist_info: DistInfo, seed: int, num_workers: int = 0,
                       pin_memory: bool = False, collate_fn=None) -> DataLoader:
    """Shuffled by (seed, epoch) — call `loader.sampler.set_epoch(epoch)` — so a resumed run sees the same order.

    `batch_size` is per process. The last incomplete batch is dropped (mixup pairs samples in a batch).
    """
    sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                 shuffle=True, seed=seed, drop_last=True)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=True, collate_fn=collate_fn,
                      persistent_workers=num_workers > 0)


def build_eval_loader(dataset, batch_size: int, dist_info: DistInfo, num_workers: int = 0,
                      pin_memory: bool = False, collate_fn=None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardedEvalSampler(len(dataset), dist_info),
                      num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate_fn,
                      persistent_workers=num_workers > 0)
