"""Aspect-ratio grouping for detection training, a compact version of torchvision's
references/detection/group_by_aspect_ratio.py.

Detectors pad every image of a batch to the largest one; batching images of similar shape
(all landscape, or all portrait) wastes less compute on padding.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import Sampler, Subset

from a2d2c.data.coco import find_detection_dataset
from a2d2c.data.loader import EpochLoader
from a2d2c.data.resumable import PerSampleSeeded, ResumableDistributedSampler
from a2d2c.distributed.process_group import DistInfo


def create_aspect_ratio_groups(aspect_ratios, k: int = 3) -> list:
    """Group index of each aspect ratio: 2k bins spaced evenly in log2 between 1/2 and 2, plus the two tails."""
    bins = 2 ** np.linspace(-1, 1, 2 * k + 1) if k > 0 else np.array([1.0])
    return np.digitize(np.asarray(aspect_ratios, dtype=np.float64), bins).tolist()


def dataset_aspect_ratios(dataset) -> list:
    """width / height of every sample of a CocoDetectionDataset, possibly inside Subsets, read from its JSON."""
    indices = None
    while isinstance(dataset, Subset):
        indices = list(dataset.indices) if indices is None else [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    ratios = find_detection_dataset(dataset).aspect_ratios()
    return ratios if indices is None else [ratios[i] for i in indices]


class GroupedBatchSampler(Sampler):
    """Batches of `batch_size` indices from `sampler`, each batch from one group where possible.

    Indices are buffered per group and a batch is emitted when a buffer fills. What is left at
    the end is batched in group order (mixing groups only where it must), so every epoch has
    exactly ``len(sampler) // batch_size`` batches, the same on every DDP rank; the remainder is
    dropped. ``set_epoch`` reaches the wrapped sampler (a DistributedSampler's shuffling).
    The sampler may yield ``(epoch, index)`` keys (``ResumableDistributedSampler``); they are
    grouped by their index and passed on whole. ``skip(n)`` drops the first n // batch_size
    batches of the next pass: those consumed before a mid-epoch checkpoint.
    """

    def __init__(self, sampler: Sampler, group_ids, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler, self.group_ids, self.batch_size = sampler, list(group_ids), batch_size
        self._skip_batches = 0

    def skip(self, num_samples: int):
        self._skip_batches = num_samples // self.batch_size

    def __iter__(self):
        skip, self._skip_batches = self._skip_batches, 0
        for i, batch in enumerate(self._batches()):
            if i >= skip:
                yield batch

    def _batches(self):
        buffers = defaultdict(list)
        for index in self.sampler:
            group = buffers[self.group_ids[index[1] if isinstance(index, tuple) else index]]
            group.append(index)
            if len(group) == self.batch_size:
                yield list(group)
                group.clear()
        leftovers = [index for key in sorted(buffers) for index in buffers[key]]
        for start in range(0, len(leftovers) - self.batch_size + 1, self.batch_size):
            yield leftovers[start:start + self.batch_size]

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def set_epoch(self, epoch: int):
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def build_grouped_train_loader(dataset, batch_size: int, dist_info: DistInfo, seed: int, num_workers: int = 0,
                               pin_memory: bool = False, collate_fn=None, group_factor: int = 3) -> EpochLoader:
    """Like ``a2d2c.data.build_train_loader`` (shuffled by seed and epoch, sharded over ranks, augmentation
    seeded per sample, resumable mid-epoch: ``loader.start_epoch(epoch, skip)``), with batches grouped by
    aspect ratio."""
    sampler = ResumableDistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                          shuffle=True, seed=seed, drop_last=True)
    groups = create_aspect_ratio_groups(dataset_aspect_ratios(dataset), group_factor)
    batches = GroupedBatchSampler(sampler, groups, batch_size)
    return EpochLoader(PerSampleSeeded(dataset, seed), batch_sampler=batches, num_workers=num_workers,
                       pin_memory=pin_memory, collate_fn=collate_fn, persistent_workers=num_workers > 0,
                       generator=torch.Generator().manual_seed(seed), ordering=batches)
