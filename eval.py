"""Evaluate a checkpoint: `python eval.py checkpoint=outputs/<run>/checkpoints/best.pt` (see configs/eval.yaml)."""
import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from a2d2c.engine.evaluation import evaluate_checkpoint
from a2d2c.utils.cli import exit_on_config_error


@hydra.main(config_path=str(Path(__file__).resolve().parent / "configs"), config_name="eval", version_base="1.3")
def main(cfg: DictConfig):
    with exit_on_config_error():
        results = evaluate_checkpoint(cfg.checkpoint, ema=cfg.ema, device=cfg.device, batch_size=cfg.batch_size,
                                      dataset_overrides=OmegaConf.to_container(cfg.dataset))
    out = Path(HydraConfig.get().runtime.output_dir) / "results.json"
    out.write_text(json.dumps(results, indent=2))
    m = results["metrics"]
    print(f"{results['backbone']}/{results['conv']} on {results['dataset']} {results['split']} "
          f"(epoch {results['epoch']}, {results['weights']} weights): top-1 {m['top1']:.2f}  top-5 {m['top5']:.2f}  "
          f"loss {m['loss']:.4f}  [{m['samples']} images] -> {out}")


if __name__ == "__main__":
    main()
