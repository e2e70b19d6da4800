"""What a checkpoint holds about a run, and how a resumed run takes it back: the two halves side by side,
so a field added to one is seen missing from the other."""
from pathlib import Path

from omegaconf import OmegaConf

from a2d2c.utils import checkpoint as ckpt


def capture_run_state(trainer, metrics: dict, rng: list) -> dict:
    """Everything needed to continue `trainer` exactly, plus what eval.py and the tables read."""
    return {
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
    }


def restore_run_state(trainer, state: dict, path: Path) -> None:
    """Load `state` (a checkpoint read from `path`) into `trainer`, refusing one of another model."""
    ckpt.check_same_model(state["config"], trainer.cfg, path)
    ckpt.load_weights(trainer.model, state["model"], path)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
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
