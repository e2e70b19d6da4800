"""Evaluate a checkpoint on its dataset's test/val split, with the config the run saved in it."""
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from omegaconf import DictConfig

from a2d2c.checkpoint import files as ckpt
from a2d2c.checkpoint.saved_config import load_saved_config
from a2d2c.data.class_map import dataset_class_map
from a2d2c.distributed.process_group import DistInfo, resolve_device
from a2d2c.engine.build import amp_dtype_from_config, build_eval_data, build_task, memory_format_from_config
from a2d2c.engine.tasks.base import Task
from a2d2c.errors import ConfigError
from a2d2c.layers import set_temperature

log = logging.getLogger(__name__)


@dataclass
class LoadedCheckpoint:
    """A checkpoint's run rebuilt for evaluation: its model (weights and τ loaded, on the device, in eval
    mode, not compiled) and evaluation loader, with the precision and memory format the run used."""

    path: Path
    state: dict
    cfg: DictConfig
    task: Task
    model: nn.Module
    loader: Any
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    memory_format: torch.memory_format


def load_for_evaluation(path, ema: bool = False, device: str = "auto", batch_size=None,
                        dataset_overrides=None) -> LoadedCheckpoint:
    """Load a checkpoint safely and rebuild what scoring it needs (eval.py, scripts/show_attention.py).

    `dataset_overrides` (e.g. {"root": ...}) change where the data is read; `batch_size` None is the
    run's eval batch size.
    """
    path = Path(path)
    state = ckpt.load_checkpoint(path, require=ckpt.EVAL_KEYS)
    saved = state.get("config_unresolved", state["config"])
    overrides = {"dataset": {key: value for key, value in (dataset_overrides or {}).items() if value is not None}}
    if "keep_static" not in saved.get("backbone", {}):
        # Saved before backbones kept some convs static by default (MobileNetV2's features.18, MobileNetV3's
        # SE convs): that model converted every conv its layout named, which keep_static=[] rebuilds.
        overrides.update(backbone={"keep_static": []}, task={"model": {"keep_static": []}})
    # Checked before anything in it is instantiated: a checkpoint never decides which code runs.
    cfg = load_saved_config(saved, path, overrides)

    task = build_task(cfg)
    model = task.build_model()
    if ema:
        if not state.get("ema"):
            raise ConfigError(f"{path} has no EMA weights (the run had trainer.ema.enabled=false); drop ema=true")
        # ModelEmaV3 keeps the averaged model under `module.`
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items()}
    else:
        weights = state["model"]
    ckpt.load_weights(model, weights, path)
    if state.get("temperature") is not None:
        set_temperature(model, state["temperature"])

    device = resolve_device(device)
    memory_format = memory_format_from_config(cfg.trainer)
    model = model.to(device, memory_format=memory_format).eval()
    class_map = state.get("class_map")  # the training split's classes, so labels mean what they meant in training
    eval_batch = batch_size or cfg.trainer.eval_batch_size or cfg.trainer.batch_size
    loader = build_eval_data(cfg, task, class_map, eval_batch, DistInfo(), device.type == "cuda")
    if "class_map" not in state and dataset_class_map(loader.dataset) is not None:
        log.warning("%s predates class maps in checkpoints (format 1): the %s split's labels follow its own class "
                    "folders or categories, which is right only if they match the training split's", path,
                    cfg.dataset.eval_split)
    return LoadedCheckpoint(path, state, cfg, task, model, loader, device, amp_dtype_from_config(cfg.trainer.amp),
                            memory_format)


def evaluate_checkpoint(path, ema: bool = False, device: str = "auto", batch_size=None, dataset_overrides=None) -> dict:
    """Rebuild the run's model and eval data, load the weights and score them as the Trainer did.

    Same τ, precision, memory format and batch size as the run, so the accuracy it recorded is
    reproduced exactly. `dataset_overrides` (e.g. {"root": ...}) change where the data is read.
    """
    run = load_for_evaluation(path, ema, device, batch_size, dataset_overrides)
    cfg, state = run.cfg, run.state
    # Compiled here, not in load_for_evaluation: scoring wants the run's speed, while a look at the
    # attention (observed layers, a few images) wants the plain module.
    model = torch.compile(run.model) if cfg.trainer.compile else run.model
    metrics = run.task.evaluate(model, run.loader, run.device, run.amp_dtype, run.memory_format)

    split = cfg.dataset.eval_split
    recorded = state.get("metrics", {})
    prefix = f"{split}_ema" if ema else split
    return {
        "checkpoint": str(run.path),
        "epoch": state["epoch"],
        "split": split,
        "weights": "ema" if ema else "model",
        "metrics": metrics,
        "recorded": {k.split("/", 1)[1]: v for k, v in recorded.items() if k.startswith(prefix + "/")},
        "backbone": cfg.backbone.name,
        "conv": cfg.conv.type,
        "dataset": cfg.dataset.name,
        "device": str(run.device),
    }
