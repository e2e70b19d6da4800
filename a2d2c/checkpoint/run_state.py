"""What a checkpoint holds about a run, and how a resumed run takes it back: the two halves side by side,
so a field added to one is seen missing from the other."""
import logging
from pathlib import Path

from omegaconf import OmegaConf

from a2d2c.checkpoint import files as ckpt
from a2d2c.checkpoint.resume_check import check_resume
from a2d2c.distributed.process_group import all_gather_object
from a2d2c.errors import ConfigError

log = logging.getLogger(__name__)


def capture_run_state(trainer, metrics: dict, rng: list) -> dict:
    """Everything needed to continue `trainer` exactly, plus what eval.py and the tables read."""
    return {
        ckpt.FORMAT_KEY: ckpt.FORMAT_VERSION,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
        "epoch": trainer.epoch,
        "step": trainer.step,
        "batches_done": trainer.batches_done,
        "skipped_steps": trainer.skipped_steps,
        "temperature": trainer.tau,
        "metrics": metrics,
        "best": trainer.best,
        "wall_time_s": trainer.wall_time_s,
        "rng": rng,  # every rank's, so each rank resumes its own random stream
        "wandb_run_id": trainer.tracker_id,
        "config": OmegaConf.to_container(trainer.cfg, resolve=True),
        # With interpolations kept, so eval.py can re-derive paths after e.g. `dataset.root=...`.
        "config_unresolved": OmegaConf.to_container(trainer.cfg, resolve=False),
        "complexity": trainer.complexity,
        "batch": trainer.batching.as_dict(),  # per-device batch, accumulation, world size: a mid-epoch resume needs them again
        "class_map": trainer.class_map,  # the training split's classes, in label order (None: fixed by the dataset)
        "resume_history": trainer.resume_history,
    }


def save_run_checkpoint(trainer, metrics: dict, is_best: bool):
    """Write `step-<step>.pt`, publish it as last.pt (and best.pt), keep the newest trainer.keep_last.

    Called at the end of an epoch (batches_done = 0) and, for recovery, between updates; collective
    under DDP (every rank's RNG state is gathered, rank 0 writes). Returns the numbered checkpoint's path.
    """
    trainer.divergence.check(trainer.last_checkpoint)
    trainer.divergence.check_weights(trainer.model, trainer.epoch, trainer.step, trainer.last_checkpoint)
    directory = trainer.output_dir / "checkpoints"
    path = ckpt.numbered_checkpoint_path(directory, trainer.step)
    rng = all_gather_object(ckpt.capture_rng_state())
    if not trainer.dist.is_main:
        trainer.last_checkpoint = path
        return path
    ckpt.save_checkpoint(capture_run_state(trainer, metrics, rng), path)
    ckpt.copy_checkpoint(path, directory / "last.pt")
    if is_best:
        ckpt.copy_checkpoint(path, directory / "best.pt")
    trainer.last_checkpoint = path  # only once it is on disk: error messages point users at it
    ckpt.prune_checkpoints(directory, trainer.cfg.trainer.keep_last)
    return path


def resume_run(trainer, resume, asked: bool = True) -> None:
    """Resume `trainer` from checkpoint `resume`, or with "auto" from the newest valid one in its run dir.

    `asked`: the user set trainer.resume (a restarted job resumes without asking, and quietly when there
    is nothing to resume yet).
    """
    if resume == "auto":
        # The newest checkpoint that loads and verifies; damaged ones are named and skipped.
        found = ckpt.load_newest_valid(trainer.output_dir / "checkpoints")
        if found is None:
            # Asked for and not found: loud, since a mistyped run dir would otherwise quietly start over.
            log.log(logging.WARNING if asked else logging.INFO, "%sno checkpoint in %s, starting from scratch",
                    "trainer.resume=auto: " if asked else "", trainer.output_dir / "checkpoints")
            return
        path, state = found
    else:
        path = Path(resume)
        state = ckpt.load_checkpoint(path, require=ckpt.RESUME_KEYS)
    restore_run_state(trainer, state, path)
    log.info("resumed from %s at epoch %d, step %d%s", path, trainer.epoch, trainer.step,
             f" (mid-epoch, after {trainer.batches_done} batches)" if trainer.batches_done else "")


def restore_run_state(trainer, state: dict, path: Path) -> None:
    """Load `state` (a checkpoint read from `path`) into `trainer`, whose config honours or refuses each change.

    The trainer was built from the new config; only state comes from the checkpoint. The LR
    scheduler's state is not loaded: timm's schedulers are functions of the epoch and of their
    config, so the new config's schedule (e.g. for more epochs) is the one that runs.
    """
    # Compared as written, interpolations unresolved: a change is reported where the user made it
    # (trainer.epochs, not also the scheduler length that follows it; dataset.root, not every path under it).
    cfg = OmegaConf.to_container(trainer.cfg, resolve=False)
    saved = state.get("config_unresolved", state["config"])
    changes = check_resume(saved, cfg, state.get("batch"), trainer.batching.as_dict(), state, path,
                           trainer.cfg.trainer.get("resume_allow"))
    saved_classes = state.get("class_map")
    if saved_classes is not None and saved_classes != trainer.class_map:
        raise ConfigError(f"the training classes found on disk differ from those {path} was trained on "
                          f"({len(saved_classes)} then, {len(trainer.class_map or [])} now); resume on the same data, "
                          f"or start a new run")
    ckpt.load_weights(trainer.model, state["model"], path)
    load_optimizer_state(trainer.optimizer, state["optimizer"])
    if trainer.scaler is not None and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    if trainer.ema is not None and state.get("ema"):
        trainer.ema.load_state_dict(state["ema"])
    trainer.epoch, trainer.step, trainer.best = state["epoch"], state["step"], state["best"]
    trainer.batches_done = state.get("batches_done", 0)
    trainer.skipped_steps = state.get("skipped_steps", 0)
    trainer.last_checkpoint = path
    trainer.last_metrics = state["metrics"]
    trainer.wall_time_s = state.get("wall_time_s", 0.0)
    trainer.tracker_id = state.get("wandb_run_id")
    if state.get("temperature") is not None:
        trainer._set_temperature(state["temperature"])
    rng = state["rng"]
    ckpt.restore_rng_state(rng[trainer.dist.rank] if trainer.dist.rank < len(rng) else rng[0])
    saved_world = (state.get("batch") or {}).get("world_size", trainer.dist.world_size)
    if saved_world != trainer.dist.world_size:
        log.warning("resuming %s, saved by %d processes, with %d: global batch %d, lr %.4g", path, saved_world,
                    trainer.dist.world_size, trainer.batching.global_batch, trainer.batching.lr)
    if changes:
        log.warning("resuming %s with changes applied: %s", path,
                    ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()))
    # What actually ran: results.json and every later checkpoint carry each resume and its changes.
    trainer.resume_history = [*state.get("resume_history", []),
                              {"checkpoint": str(path), "epoch": state["epoch"], "step": state["step"],
                               "batches_done": trainer.batches_done, "world_size": trainer.dist.world_size,
                               "changes": {k: [old, new] for k, (old, new) in changes.items()}}]


def load_optimizer_state(optimizer, saved: dict) -> None:
    """The saved moments and step counts, under this run's hyperparameters.

    `load_state_dict` also restores each param group's lr, weight decay, momentum, ...; putting the
    new config's back is what lets a resume apply `optimizer.*` changes (the LR itself is set by
    the scheduler at every update).
    """
    fresh = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, hyperparameters in zip(optimizer.param_groups, fresh):
        group.update(hyperparameters)
