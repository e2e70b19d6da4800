"""Per-device batch, global batch and LR scaling of a run, made explicit (and written to results.json)."""
import math
from dataclasses import asdict, dataclass

from a2d2c.errors import ConfigError

LR_RULES = {"none": lambda ratio: 1.0, "linear": lambda ratio: ratio, "sqrt": math.sqrt}


@dataclass(frozen=True)
class BatchScaling:
    per_device_batch: int   # samples per process per forward/backward (the micro-batch)
    accum_steps: int
    world_size: int
    global_batch: int       # samples per optimizer step = per_device_batch × world_size × accum_steps
    lr_rule: str            # how the LR follows the global batch: none, linear, sqrt
    base_batch_size: int    # the global batch that optimizer.lr is meant for
    base_lr: float          # optimizer.lr as configured
    lr: float               # the LR the optimizer runs with

    def as_dict(self) -> dict:
        return asdict(self)


def batch_scaling(trainer_cfg, world_size: int, base_lr: float) -> BatchScaling:
    """From `trainer.batch_size` (global) or `trainer.per_device_batch_size`, and `trainer.lr_scaling`.

    Setting `per_device_batch_size` keeps the per-process batch fixed, so the global batch grows with
    the number of GPUs; `lr_scaling.rule=linear` then scales the LR by global / base batch (Goyal et al.).
    """
    accum = trainer_cfg.accum_steps
    if not isinstance(accum, int) or accum < 1:
        raise ConfigError(f"trainer.accum_steps={accum!r} must be a positive integer")
    per_device = trainer_cfg.get("per_device_batch_size")
    if per_device is not None:
        if per_device < 1:
            raise ConfigError(f"trainer.per_device_batch_size={per_device} must be at least 1 (or null to use trainer.batch_size)")
        global_batch = per_device * world_size * accum
    else:
        global_batch = trainer_cfg.batch_size
        if global_batch < 1 or global_batch % (world_size * accum):
            raise ConfigError(f"trainer.batch_size={global_batch} (the batch of one optimizer step) must divide by "
                              f"world size × trainer.accum_steps = {world_size} × {accum}")
        per_device = global_batch // (world_size * accum)
    scaling = trainer_cfg.get("lr_scaling") or {"rule": "none", "base_batch_size": global_batch}
    rule, base = scaling["rule"], scaling["base_batch_size"]
    if rule not in LR_RULES:
        raise ConfigError(f"trainer.lr_scaling.rule={rule!r} is not valid; use one of {', '.join(LR_RULES)}")
    if not base or base < 1:
        raise ConfigError(f"trainer.lr_scaling.base_batch_size={base!r} must be a positive integer")
    lr = base_lr * LR_RULES[rule](global_batch / base)
    return BatchScaling(per_device, accum, world_size, global_batch, rule, base, base_lr, lr)
