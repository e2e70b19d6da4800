"""Shared helpers for the config, trainer and CLI tests: compose configs, run the entry points."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from helpers.paths import CONFIG_DIR, REPO  # noqa: F401 - re-exported for the tests

# No tracker, no progress bar: what every in-process test wants unless it checks those.
QUIET = ("logger=none", "trainer.progress_bar=false")

# A model and data small enough that a few epochs take seconds on a CPU.
TINY = ("backbone=mobilenetv2_x0_35", "dataset=synthetic", "dataset.image_size=8", "dataset.stem=cifar",
        "dataset.num_classes=10", "dataset.train_size=32", "dataset.eval_size=16", "trainer.batch_size=8")


def compose_config(*overrides, config_name="train"):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def run_script(script, *args, timeout=600):
    """Run train.py / eval.py as a user would, from the repository root, wandb offline and silent."""
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def wait_for_step(proc: subprocess.Popen, metrics: Path, step: int, start_offset: int, timeout: float = 120):
    """Block until this process has logged an update >= `step` (or has ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file():
            with open(metrics) as f:
                f.seek(start_offset)
                lines = [line for line in f.read().splitlines() if line.endswith("}")]
            if any(json.loads(line)["step"] >= step for line in lines):
                return
        time.sleep(0.01)
