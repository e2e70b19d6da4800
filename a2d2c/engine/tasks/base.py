"""The interface between the Trainer and what it trains.

The Trainer (engine/trainer.py) and checkpoint evaluation (engine/evaluation.py) know nothing
about images, labels or boxes: every task-specific decision is a method here. ClassificationTask
and DetectionTask implement it; a new task (segmentation, say) implements it and plugs into the
same loop. `isinstance(task, Task)` checks the members are there (engine/build.py does).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, Tuple, runtime_checkable

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from a2d2c.data.loader import EpochLoader
from a2d2c.distributed.process_group import DistInfo


@runtime_checkable
class Task(Protocol):
    primary_metric: str  # the eval metric that picks checkpoints/best.pt unless trainer.monitor says otherwise
    collate_fn: Optional[Callable]  # how the loaders batch samples (None: default stacking)

    def build_model(self) -> nn.Module:
        """The network, from the conv options the task was configured with; a bad option is a ConfigError."""

    def complexity_module(self, model: nn.Module) -> nn.Module:
        """The part of `model` whose params / MAdds the run reports."""

    def input_size(self, image_size: int) -> Tuple[int, ...]:
        """One input as the complexity counter sees it."""

    def build_train_loader(self, dataset: Dataset, batch_size: int, dist_info: DistInfo, seed: int,
                           num_workers: int, pin_memory: bool) -> EpochLoader:
        """The training loader: sharded, ordered by (seed, epoch), resumable mid-epoch (EpochLoader.start_epoch)."""

    def move_batch(self, batch: Any, device: torch.device, memory_format: torch.memory_format) -> Any:
        """A loader's batch on `device`, ready for `training_step` / the model."""

    def batch_size(self, batch: Any) -> int:
        """Samples in a (moved) batch, for throughput and averages."""

    def training_step(self, model: nn.Module, batch: Any) -> Tuple[torch.Tensor, dict]:
        """(loss to back-propagate, {name: detached tensor} to average over the epoch)."""

    def evaluate(self, model: nn.Module, loader, device: torch.device, amp_dtype=None,
                 memory_format=torch.contiguous_format) -> dict:
        """Metrics over the whole split, exact under DDP (every rank's shard counted once), with "samples"."""
