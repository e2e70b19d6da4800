"""Evaluate a checkpoint: `python eval.py checkpoint=outputs/<run>/checkpoints/best.pt` (see configs/eval.yaml)."""
import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from a2d2c.engine.evaluation import evaluate_checkpoint
from a2d2c.cli.overrides import check_override_keys, exit_on_config_error
from a2d2c.config_checks import check_eval_config


# The metrics the summary line shows, of those the task returned (classification: top-1/5 in %,
# detection: COCO box AP in [0, 1]); results.json has them all.
SUMMARY = {"top1": "top-1 {:.2f}", "top5": "top-5 {:.2f}", "loss": "loss {:.4f}",
           "AP": "AP {:.4f}", "AP50": "AP50 {:.4f}", "AP75": "AP75 {:.4f}"}


@hydra.main(config_path=str(Path(__file__).resolve().parent / "configs"), config_name="eval", version_base="1.3")
def main(cfg: DictConfig):
    with exit_on_config_error():
        check_eval_config(cfg)  # first: `checkpoint: ???` unset would otherwise be Hydra's multi-line error
        results = evaluate_checkpoint(cfg.checkpoint, ema=cfg.ema, device=cfg.device, batch_size=cfg.batch_size,
                                      dataset_overrides=OmegaConf.to_container(cfg.dataset))
    out = Path(HydraConfig.get().runtime.output_dir) / "results.json"
    out.write_text(json.dumps(results, indent=2))
    m = results["metrics"]
    shown = "  ".join(template.format(m[key]) for key, template in SUMMARY.items() if key in m)
    print(f"{results['backbone']}/{results['conv']} on {results['dataset']} {results['split']} "
          f"(epoch {results['epoch']}, {results['weights']} weights): {shown}  [{m['samples']} images] -> {out}")


if __name__ == "__main__":
    check_override_keys(Path(__file__).resolve().parent / "configs", "eval", sys.argv[1:])
    main()
