#!/usr/bin/env python
"""Pictures of what a checkpoint's dynamic convs do: their attention on evaluation images.

    python scripts/show_attention.py outputs/<run>/checkpoints/best.pt
    python scripts/show_attention.py best.pt --images 4 --layers layer1.0.conv1 layer4.1.conv2 --out attn/

The checkpoint is loaded as eval.py loads it (saved config checked before anything is built, weights
checked, τ restored) and its evaluation split runs through the model while its attention layers are observed
(a2d2c.tracking.attention_stats.AttentionProbe). Written to --out (default <run dir>/attention/):

* positions_<layer>.png per chosen per-position layer (a2d2c, a2d2c_plus): the first --images
  images, each output position's dominant kernel (colour, dark = unsure) and normalised entropy;
* kernels_<layer>.png per chosen per-sample layer (dynamic, condconv, odconv, or a 1x1 output):
  the images x kernels heat map of the kernel weights;
* summary.png: per attention layer, mean normalised entropy, balance (normalised entropy of the mean
  kernel usage: near 0 is a layer collapsed onto one kernel) and how many kernels carry 90% of the usage,
  over the first --stats-images evaluation images.

--layers defaults to the first, middle and last attention layers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from a2d2c.engine.evaluation import load_for_evaluation  # noqa: E402
from a2d2c.engine.tasks.classification import ClassificationTask  # noqa: E402
from a2d2c.errors import ConfigError  # noqa: E402
from a2d2c.reporting.attention_figures import position_figure, sample_figure, summary_figure  # noqa: E402
from a2d2c.reporting.attention_maps import choose_layers, is_per_position  # noqa: E402
from a2d2c.tracking.attention_stats import AttentionProbe, attention_layers  # noqa: E402


def run_dir_of(checkpoint: Path) -> Path:
    """A run keeps its checkpoints in <run dir>/checkpoints/; a checkpoint elsewhere stands for its own folder."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def probe_checkpoint(run, keep: int, max_images: int):
    """Evaluation batches through the model under an AttentionProbe, until `max_images` (0: the whole split);
    returns the probe and how many images it saw."""
    probe = AttentionProbe(run.model, keep=keep)
    seen = 0
    with probe, torch.no_grad():
        for batch in run.loader:
            images, _ = run.task.move_batch(batch, run.device, run.memory_format, train=False)
            with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                run.model(images)
            seen += len(images)
            if max_images and seen >= max_images:
                break
    return probe, seen


def show_attention(checkpoint, out=None, images: int = 8, layers=None, device: str = "auto",
                   stats_images: int = 1024) -> list:
    """Write the figures; returns their paths ([] for a model without attention layers)."""
    checkpoint = Path(checkpoint)
    run = load_for_evaluation(checkpoint, device=device)
    if not isinstance(run.task, ClassificationTask):
        raise ConfigError(f"{checkpoint} is a {run.cfg.dataset.name} detection run; show_attention.py draws "
                          f"classification models (a detector's inputs differ in size)")
    names = list(attention_layers(run.model))
    if not names:
        return []
    chosen = choose_layers(names, layers)  # before any image runs: a wrong name is one line at once
    probe, seen = probe_checkpoint(run, images, stats_images)
    out = Path(out) if out is not None else run_dir_of(checkpoint) / "attention"
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for name in chosen:
        example = probe.examples[name]
        if is_per_position(example):
            figures.append((f"positions_{name}.png", position_figure(probe.images, example, probe.shapes[name], name)))
        else:
            figures.append((f"kernels_{name}.png", sample_figure(example, name)))
    cfg = run.cfg
    title = (f"{cfg.backbone.name}/{cfg.conv.type} on {cfg.dataset.name} {cfg.dataset.eval_split} "
             f"({seen} images, epoch {run.state['epoch']})")
    figures.append(("summary.png", summary_figure(probe.stats.result(), title)))
    written = []
    for filename, figure in figures:
        figure.savefig(out / filename, dpi=100)
        written.append(out / filename)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("checkpoint", type=Path, help="a .pt file a run wrote, e.g. outputs/<run>/checkpoints/best.pt")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default: <run dir>/attention/)")
    parser.add_argument("--images", type=int, default=8, help="evaluation images in the per-layer pictures")
    parser.add_argument("--layers", nargs="+", metavar="NAME",
                        help="attention layers to draw (default: the first, middle and last)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--stats-images", type=int, default=1024,
                        help="evaluation images the summary's statistics cover (0: the whole split)")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be at least 1")
    try:
        torch.device(args.device if args.device != "auto" else "cpu")
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a device: use auto, cpu, cuda or cuda:<index>")
    if args.stats_images < 0:
        parser.error("--stats-images must be 0 (the whole split) or more")
    try:
        written = show_attention(args.checkpoint, args.out, args.images, args.layers, args.device,
                                 max(args.stats_images, args.images) if args.stats_images else 0)
    except ConfigError as e:  # a missing, unsafe or foreign checkpoint, a wrong layer name: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not written:
        print(f"{args.checkpoint}: no conv of this model mixes kernels (a static model): there is no attention to show")
        return 0
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
