"""Configs saved by an older a2d2c, read in today's terms.

A checkpoint keeps the config of the run that wrote it. Where a later version moved a class the
config names (`_target_`) or a key, the saved config is rewritten here, once, as it is loaded: a
resume then compares like with like (checkpoint/resume_check.py) and eval.py instantiates
today's module. Only the exact old strings listed below are rewritten, so this never widens what a
saved config may instantiate (checkpoint/saved_config.py still checks every target).
"""
from __future__ import annotations

# _target_ values of older configs -> where that class lives now (the package layout of issue 13).
MOVED_TARGETS = {
    "a2d2c.engine.classification.ClassificationTask": "a2d2c.engine.tasks.classification.ClassificationTask",
    "a2d2c.engine.detection.DetectionTask": "a2d2c.engine.tasks.detection.DetectionTask",
    "a2d2c.utils.tracking.WandbLogger": "a2d2c.tracking.loggers.WandbLogger",
    "a2d2c.utils.sweep_summary.SweepSummary": "a2d2c.reporting.sweep_summary.SweepSummary",
}
DETECTION_TASK = "a2d2c.engine.tasks.detection.DetectionTask"
STATIC_CONV = "static"  # no τ: its tau_schedule is null (configs/conv/static.yaml)


def _retarget(node):
    if isinstance(node, dict):
        return {k: (MOVED_TARGETS.get(v, v) if k == "_target_" and isinstance(v, str) else _retarget(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_retarget(v) for v in node]
    return node


def upgrade_config(config: dict, resolved: bool = True) -> dict:
    """`config` (a plain dict, as a checkpoint holds it) with today's targets and keys."""
    if not isinstance(config, dict):
        return config
    config = _retarget(config)
    task = config.get("task")
    if isinstance(task, dict) and task.get("_target_") == DETECTION_TASK and "aspect_ratio_group_factor" not in task:
        # Read by the Trainer from the dataset before the task built its own train loader.
        dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
        task["aspect_ratio_group_factor"] = (dataset.get("aspect_ratio_group_factor", -1) if resolved
                                             else "${oc.select:dataset.aspect_ratio_group_factor,-1}")
    _move_tau_schedule(config)
    return config


def _move_tau_schedule(config: dict) -> None:
    """τ's schedule moved from `trainer.temperature` to `conv.tau_schedule` (null for a static conv, which has no τ)."""
    trainer, conv = config.get("trainer"), config.get("conv")
    if not isinstance(trainer, dict) or "temperature" not in trainer or not isinstance(conv, dict):
        return
    schedule = trainer.pop("temperature")
    if "tau_schedule" not in conv:
        conv["tau_schedule"] = None if conv.get("type") == STATIC_CONV else schedule


def upgrade_saved_configs(state: dict) -> None:
    """Rewrite, in place, both configs a checkpoint holds (resolved and, if there, unresolved)."""
    if "config" in state:
        state["config"] = upgrade_config(state["config"], resolved=True)
    if "config_unresolved" in state:
        state["config_unresolved"] = upgrade_config(state["config_unresolved"], resolved=False)
