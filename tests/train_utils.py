"""Shared helpers for the config, trainer and CLI tests: compose configs, run the entry points."""
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"

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
