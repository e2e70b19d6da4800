"""Train a model: `python train.py [group=option ...] [key=value ...]` (see configs/train.yaml)."""
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from a2d2c.utils.cli import check_group_choices, exit_on_config_error

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig):
    from a2d2c.engine import Trainer  # torch & co. load after the config is known to be valid

    with exit_on_config_error():
        trainer = Trainer(cfg, HydraConfig.get().runtime.output_dir)
        results = trainer.fit()
    # Sweepers (e.g. Optuna) optimise the returned value.
    return results["best"][trainer.monitor]


if __name__ == "__main__":
    check_group_choices(CONFIG_DIR, sys.argv[1:])
    main()
