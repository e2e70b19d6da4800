"""Train a model: `python train.py [group=option ...] [key=value ...]` (see configs/train.yaml)."""
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from a2d2c.utils.cli import check_group_choices, check_override_keys, exit_on_config_error, group_sweep_runs
from a2d2c.utils.launch_env import rank_overrides

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig):
    from a2d2c.engine import Trainer  # torch & co. load after the config is known to be valid
    from a2d2c.engine.trainer import Preempted

    group_sweep_runs(cfg)  # in a sweep, the jobs' wandb runs are grouped by it
    with exit_on_config_error():
        trainer = Trainer(cfg, HydraConfig.get().runtime.output_dir)
        try:
            results = trainer.fit()
        except Preempted as stop:
            # Saved and closed: exit as a process ended by that signal would, so schedulers see "not done".
            logging.getLogger(__name__).warning("%s", stop)
            sys.exit(128 + stop.signum)
    # Sweepers (e.g. Optuna) optimise the returned value.
    return results["best"][trainer.monitor]


if __name__ == "__main__":
    check_group_choices(CONFIG_DIR, sys.argv[1:])
    check_override_keys(CONFIG_DIR, "train", sys.argv[1:])
    sys.argv += rank_overrides()  # under torchrun: one .hydra/ copy per run dir, rank 0's
    main()
