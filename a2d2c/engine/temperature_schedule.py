"""Which softmax temperature τ a run's dynamic layers use: annealed (DyConv), or kept from the starting weights.

`conv.tau_schedule` (configs/conv/<dynamic type>.yaml; null in conv/static.yaml) anneals τ linearly from
`start` to `end` over a length given either in epochs (`epochs: 10`) or as a fraction of the run
(`fraction: 0.5` of trainer.epochs); exactly one of the two is set (config_checks.py says so in one line
otherwise). A model that starts from a dynamic run's weights (detector.backbone_weights) carries that run's
τ buffers: with `from_weights: true` (the default) it keeps that τ for the whole run instead of re-annealing
from `start`. A static or condconv model has no τ: a tau_schedule a preset gave its conv node is ignored.
"""
from __future__ import annotations

import logging
from typing import NamedTuple, Optional

import torch
from omegaconf import DictConfig

from a2d2c.layers import annealed_temperature, has_temperature, set_temperature

log = logging.getLogger(__name__)

# Keys of weights a model may start from, in the task's model node (configs/task/*.yaml), and the key users set.
WEIGHT_KEYS = {"backbone_weights": "detector.backbone_weights"}


class TemperatureSchedule(NamedTuple):
    start: float
    end: float
    epochs: float  # the length of the annealing, in epochs (fractions allowed)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "TemperatureSchedule":
        """From a run's config: `conv.tau_schedule.epochs`, or `conv.tau_schedule.fraction` × `trainer.epochs`."""
        t = cfg.conv.tau_schedule
        length = t.epochs if t.epochs is not None else t.fraction * cfg.trainer.epochs
        return cls(float(t.start), float(t.end), float(length))

    def at(self, epoch: float) -> float:
        """τ at a (fractional) epoch."""
        return annealed_temperature(epoch, self.epochs, self.start, self.end)


def starting_weights(cfg: DictConfig) -> Optional[tuple]:
    """(config key, path) of the weights the task's model starts from, or None."""
    model = (cfg.get("task") or {}).get("model") or {}
    for key, user_key in WEIGHT_KEYS.items():
        if model.get(key):
            return user_key, model[key]
    return None


def weights_temperature(path) -> Optional[float]:
    """The τ saved in a checkpoint's (or plain state dict's) `.temperature` buffers; None when it has none
    (a static model, or a dynamic one saved before τ was model state). The Trainer sets one τ on every
    layer; should a hand-made state dict hold several, the largest (the least annealed) is used."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state["model"] if isinstance(state, dict) and "model" in state else state
    taus = [float(v) for k, v in weights.items() if k.endswith(".temperature")]
    return max(taus) if taus else None


def plan_temperature(cfg: DictConfig, model: torch.nn.Module, ema_model: Optional[torch.nn.Module] = None):
    """(schedule or None, τ the run keeps or None), τ already set on `model` (and `ema_model`).

    None schedule: no annealing — a model whose layers have no τ (static, or condconv's sigmoid routing:
    whatever conv.tau_schedule holds is not read),
    conv.tau_schedule=null (the layers keep theirs), or τ kept from the starting weights (returned, set on
    every dynamic layer, new ones included)."""
    if not any(has_temperature(m) for m in model.modules()):
        return None, None
    tcfg = cfg.conv.get("tau_schedule")
    if tcfg is None:
        return None, None
    schedule = TemperatureSchedule.from_config(cfg)
    weights = starting_weights(cfg)
    from_weights = tcfg.get("from_weights", True)
    kept = weights_temperature(weights[1]) if weights is not None and from_weights else None
    models = [m for m in (model, ema_model) if m is not None]
    for m in models:
        set_temperature(m, schedule.start if kept is None else kept)
    if kept is not None:
        log.info("τ: kept at %g from %s=%s (conv.tau_schedule.from_weights=false anneals %g -> %g instead)",
                 kept, *weights, schedule.start, schedule.end)
        return None, kept
    note = "" if weights is None else f" ({weights[0]}: {'no τ saved' if from_weights else 'from_weights=false'})"
    log.info("τ: %g -> %g over %g of %d epochs, then %g%s", schedule.start, schedule.end, schedule.epochs,
             cfg.trainer.epochs, schedule.end, note)
    return schedule, None
