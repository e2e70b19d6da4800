"""Config in, the run's parts out: the one place a run is built.

`build_run` makes everything a training run needs, in dependency order, and returns it as
RunParts; the Trainer (trainer.py) takes these parts and only loops. Checkpoint evaluation
(evaluation.py) builds its task, precision and evaluation loader with the same functions, so a
checkpoint is scored exactly as its run scored it.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
from hydra.utils import instantiate
from omegaconf import DictConfig
from timm.utils import ModelEmaV3, random_seed
from torch.nn.parallel import DistributedDataParallel

from a2d2c.config_checks import check_train_config
from a2d2c.data.class_map import apply_class_map, check_num_classes, dataset_class_map
from a2d2c.data.loader import build_eval_loader
from a2d2c.distributed import process_group as distributed
from a2d2c.engine.batch_scaling import BatchScaling, batch_scaling
from a2d2c.engine.tasks.base import Task
from a2d2c.engine.temperature_schedule import TemperatureSchedule, plan_temperature
from a2d2c.errors import ConfigError
from a2d2c.models.complexity import count_complexity

AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype_from_config(amp):
    if amp not in AMP_DTYPES:
        raise ConfigError(f"trainer.amp={amp!r} is not valid; use null (fp32), bf16 or fp16")
    return AMP_DTYPES[amp]


def memory_format_from_config(tcfg) -> torch.memory_format:
    return torch.channels_last if tcfg.channels_last else torch.contiguous_format


def build_task(cfg: DictConfig) -> Task:
    task = instantiate(cfg.task)
    if not isinstance(task, Task):  # configs/task/ names the class; a foreign one would fail deep in the loop
        raise ConfigError(f"task._target_ builds a {type(task).__name__}, which lacks members of a2d2c.engine.tasks.base.Task")
    return task


def build_eval_data(cfg: DictConfig, task: Task, class_map, batch_size: int, dist_info, pin_memory: bool):
    """The evaluation split's loader, its labels numbered as the training split numbered them (`class_map`)."""
    dcfg = cfg.dataset
    eval_set = instantiate(dcfg.eval)
    if class_map is not None:
        apply_class_map(eval_set, class_map, f"the {dcfg.name} {dcfg.eval_split} split")
    return build_eval_loader(eval_set, batch_size, dist_info, dcfg.num_workers, pin_memory, task.collate_fn)


@dataclass
class RunParts:
    """What a training run is made of; the Trainer takes each field as an attribute of the same name."""

    cfg: DictConfig
    dist: distributed.DistInfo
    device: torch.device
    amp_dtype: Optional[torch.dtype]   # autocast dtype, None for fp32
    memory_format: torch.memory_format
    accum_steps: int
    eval_split: str
    task: Task
    monitor: str                       # "<split>/<metric>" that picks checkpoints/best.pt
    complexity: dict                   # params / MAdds of the task's complexity module, at batch 1
    model: nn.Module                   # the model on its device (SyncBatchNorm under DDP if asked)
    ema: Optional[ModelEmaV3]
    batching: BatchScaling             # global / per-device batch, accumulation, scaled LR
    optimizer: torch.optim.Optimizer
    scheduler: Any                     # a timm scheduler, stepped with the fractional epoch
    scaler: Optional[torch.amp.GradScaler]  # fp16 only
    anneal: Optional[TemperatureSchedule] # τ's schedule, None when τ is not annealed
    tau: Optional[float]               # τ now, None for a model without dynamic convs
    class_map: Any                     # the training split's classes in label order (None: fixed by the dataset)
    train_loader: Any                  # an EpochLoader (data/loader.py)
    updates_per_epoch: int
    eval_loader: Any
    train_model: nn.Module             # what the training step calls: DDP-wrapped and/or compiled
    eval_model: nn.Module              # what evaluation calls: compiled or not, never DDP (each rank scores its shard)


def build_run(cfg: DictConfig) -> RunParts:
    check_train_config(cfg)  # before anything is built or written: a bad value is one line, nothing lost
    tcfg = cfg.trainer
    dist = distributed.init_distributed(tcfg.device)
    device = distributed.resolve_device(tcfg.device, dist.local_rank)
    if not dist.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the job
    random_seed(cfg.seed, dist.rank)
    if tcfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not tcfg.deterministic
    amp_dtype = amp_dtype_from_config(tcfg.amp)
    memory_format = memory_format_from_config(tcfg)

    task = build_task(cfg)
    model = task.build_model()
    # Counted on a copy at batch size 1, so the run's own model and RNG stream are untouched.
    # A detector is counted on its backbone + FPN (task.complexity_module): its heads' cost depends on the weights.
    complexity = count_complexity(task.complexity_module(copy.deepcopy(model)).eval(),
                                  task.input_size(cfg.dataset.image_size))
    if tcfg.get("sync_bn") and dist.world_size > 1:
        model = distributed.convert_sync_batchnorm(model, device)
    model = model.to(device, memory_format=memory_format)
    ema = ModelEmaV3(model, decay=tcfg.ema.decay, use_warmup=tcfg.ema.use_warmup) if tcfg.ema.enabled else None
    batching = batch_scaling(tcfg, dist.world_size, cfg.optimizer.lr)
    optimizer = instantiate(cfg.optimizer, lr=batching.lr)(params=model.parameters())
    # timm schedulers in epoch units, stepped every update with the fractional epoch.
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype is torch.float16 else None
    # τ (temperature_schedule.py): annealed, or kept from dynamic starting weights; a static model has none.
    anneal, tau = plan_temperature(cfg, model, ema.module if ema is not None else None)

    dcfg, pin = cfg.dataset, device.type == "cuda"
    train_set = instantiate(dcfg.train)
    check_num_classes(train_set, dcfg.num_classes, "train")
    # The training split numbers the classes; the evaluation split (and eval.py, from the checkpoint) follows it.
    class_map = dataset_class_map(train_set)
    train_loader = task.build_train_loader(train_set, batching.per_device_batch, dist, cfg.seed, dcfg.num_workers, pin)
    updates_per_epoch = len(train_loader) // tcfg.accum_steps
    if updates_per_epoch == 0:
        raise ConfigError(f"the global batch {batching.global_batch} is larger than the {len(train_set)} "
                          f"training samples; lower trainer.batch_size")
    eval_batch = max(1, (tcfg.eval_batch_size or batching.global_batch) // dist.world_size)
    eval_loader = build_eval_data(cfg, task, class_map, eval_batch, dist, pin)

    eval_model = torch.compile(model) if tcfg.compile else model
    if dist.world_size > 1:
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        train_model = torch.compile(ddp) if tcfg.compile else ddp
    else:
        train_model = eval_model

    return RunParts(
        cfg=cfg, dist=dist, device=device, amp_dtype=amp_dtype, memory_format=memory_format,
        accum_steps=tcfg.accum_steps, eval_split=dcfg.eval_split, task=task,
        monitor=f"{dcfg.eval_split}/{tcfg.monitor or task.primary_metric}", complexity=complexity, model=model,
        ema=ema, batching=batching, optimizer=optimizer, scheduler=scheduler, scaler=scaler, anneal=anneal, tau=tau,
        class_map=class_map, train_loader=train_loader, updates_per_epoch=updates_per_epoch, eval_loader=eval_loader,
        train_model=train_model, eval_model=eval_model)
