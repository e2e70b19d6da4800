"""Train a model: `python train.py [group=option ...] [key=value ...]` (see configs/train.yaml)."""
import logging
import sys
from functools import partial
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from a2d2c.cli.overrides import check_group_choices, check_override_keys, exit_on_config_error, group_sweep_runs
from a2d2c.config_checks import check_train_config
from a2d2c.cli.run_dir import claim_run_dir, continue_command, release, save_hydra_files

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig):
    from a2d2c.engine.trainer import Trainer  # torch & co. load after the config is known to be valid
    from a2d2c.engine.preemption import Preempted

    group_sweep_runs(cfg)  # in a sweep, the jobs' wandb runs are grouped by it
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    with exit_on_config_error():
        check_train_config(cfg)  # a bad value ends here, before the run dir is claimed and written (also in Trainer)
        # Locked for this run, or refused before anything in it is touched; True when a restart continues it.
        continue_job = claim_run_dir(run_dir, cfg.trainer.resume, partial(save_hydra_files, cfg=cfg, hydra_cfg=hydra_cfg))
        try:
            trainer = Trainer(cfg, run_dir, continue_job=continue_job)
            results = trainer.fit()
        except Preempted as stop:
            # Saved and closed: exit as a process ended by that signal would, so schedulers see "not done".
            logging.getLogger(__name__).warning("%s; continue with: %s", stop,
                                                continue_command(run_dir, hydra_cfg.overrides.task))
            sys.exit(128 + stop.signum)
        finally:
            release(run_dir)
    # Sweepers (e.g. Optuna) optimise the returned value.
    return results["best"][trainer.monitor]


if __name__ == "__main__":
    check_group_choices(CONFIG_DIR, sys.argv[1:])
    check_override_keys(CONFIG_DIR, "train", sys.argv[1:])
    main()
