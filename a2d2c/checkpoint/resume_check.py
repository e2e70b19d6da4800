"""What a resumed run may change, and what it may not: it honours a change or refuses it, never ignores it.

The new config builds the resumed run (model, optimizer hyperparameters, LR schedule, loaders);
the checkpoint gives it only state (weights, optimizer moments, counters, RNG). Comparing the two
configs before loading anything sorts every difference into one of three kinds:

- ignored: where data lives and how the run reports (paths, workers, logging, checkpoint cadence);
- fixed: the model and its data; a checkpoint of one cannot continue as another;
- everything else (epochs, LR, schedule, τ annealing, batch at an epoch boundary, ...) is applied
  for real, but only when the user lists it in `trainer.resume_allow`, so that a resume with a
  stale or mistyped command never changes a run quietly. τ's schedule lives in the conv node
  (`conv.tau_schedule`) but is training, not model: it is of this kind, not fixed. A static
  model has no τ, so what its conv node says about τ is not compared at all.

Mid-epoch the rest of the epoch is replayed from the sampler's position, so the per-process
batch, the accumulation and the number of processes must be those that consumed the first part.
"""
from __future__ import annotations

from a2d2c.errors import ConfigError

IGNORED = ("trainer.resume", "trainer.resume_allow", "trainer.progress_bar", "trainer.log_every",
           "trainer.keep_last", "trainer.checkpoint_every_steps", "trainer.eval_batch_size", "trainer.device",
           "logger", "dataset.root", "dataset.num_workers", "dataset.download", "dataset.bad_images",
           "recipe", "trainer.attention")
FIXED = ("backbone", "conv", "detector", "dataset", "task", "seed")
# τ's schedule: under the fixed conv node, but how the run trains, so applied when listed in trainer.resume_allow.
TAU_SCHEDULE, NO_TAU_CONVS = "conv.tau_schedule", ("static", "condconv")
# The batch geometry a mid-epoch checkpoint needs again (BatchScaling fields, a2d2c/engine/batch_scaling.py).
EPOCH_REPLAY = ("per_device_batch", "accum_steps", "world_size")


class _Unset:
    """A key one of the two configs does not have (a checkpoint from before the key existed)."""

    def __repr__(self):
        return "<unset>"


UNSET = _Unset()


def _under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _leaves(node, prefix: str = "") -> dict:
    """{dotted key: value} of a plain config; lists are compared whole."""
    if not isinstance(node, dict):
        return {prefix: node}
    leaves = {}
    for key, value in node.items():
        leaves.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return leaves


def _conv_type(config: dict):
    conv = config.get("conv")
    return conv.get("type") if isinstance(conv, dict) else None


def config_changes(saved: dict, current: dict) -> dict:
    """{key: (checkpoint's value, this run's value)} for every leaf that differs, ignored keys left out."""
    old, new = _leaves(saved), _leaves(current)
    ignored = IGNORED
    if _conv_type(saved) == _conv_type(current) and _conv_type(saved) in NO_TAU_CONVS:  # no τ: tau_schedule not read
        ignored = (*IGNORED, TAU_SCHEDULE)
    return {key: (old.get(key, UNSET), new.get(key, UNSET)) for key in sorted(old.keys() | new.keys())
            if old.get(key, UNSET) != new.get(key, UNSET) and not _under(key, ignored)}


def _listed(changes: dict) -> str:
    return ", ".join(f"{key} ({old!r} -> {new!r})" for key, (old, new) in changes.items())


def check_resume(saved_cfg: dict, cfg: dict, saved_batch, batch: dict, state: dict, path, allow) -> dict:
    """The config changes this resume applies; one ConfigError line for any it cannot or may not apply.

    `saved_batch` and `batch` are BatchScaling dicts (the checkpoint's, None for an older format, and this run's).
    """
    changes = config_changes(saved_cfg, cfg)
    fixed = {k: v for k, v in changes.items() if _under(k, FIXED) and not _under(k, (TAU_SCHEDULE,))}
    if fixed:
        raise ConfigError(f"cannot resume {path} as another model or dataset: {_listed(fixed)}; resume with the "
                          f"checkpoint's values, or start a new run without trainer.resume")
    batches_done = state.get("batches_done", 0)
    if batches_done:
        if saved_batch is None:
            raise ConfigError(f"{path} was saved mid-epoch by an older a2d2c that did not record its batch layout; "
                              f"resume from an end-of-epoch checkpoint (a step-*.pt saved at an epoch end)")
        replay = {k: (saved_batch[k], batch[k]) for k in EPOCH_REPLAY if saved_batch[k] != batch[k]}
        if replay:
            raise ConfigError(f"{path} was saved {batches_done} batches into epoch {state['epoch'] + 1}, and this run "
                              f"changes {_listed(replay)}: the rest of that epoch cannot be replayed exactly; resume "
                              f"with the same batch and number of processes, or from an end-of-epoch checkpoint")
    not_allowed = {k: v for k, v in changes.items() if not _under(k, allow or ())}
    if not_allowed:
        keys = ",".join(not_allowed)
        raise ConfigError(f"resuming {path} would change {_listed(not_allowed)}; to apply this, add "
                          f"trainer.resume_allow=[{keys}] (the optimizer and LR schedule are rebuilt from the new "
                          f"values), or resume with the checkpoint's values")
    epochs = cfg["trainer"]["epochs"]
    if state["epoch"] > epochs:
        raise ConfigError(f"trainer.epochs={epochs}, but {path} has trained {state['epoch']} epochs already; "
                          f"resume with trainer.epochs >= {state['epoch']}")
    return changes
