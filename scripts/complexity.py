#!/usr/bin/env python
"""Params and MAdds of every backbone x conv type, as a markdown table.

    python scripts/complexity.py                 # 224x224 imagenet stem and 32x32 cifar stem
    python scripts/complexity.py --out docs/complexity.md

Counted with a2d2c.models.complexity.count_complexity (batch 1, torch.utils.flop_counter, the
papers' convention) on meta tensors, so the whole table takes seconds. Where the DyConv paper
(Chen et al., CVPR 2020, Table 1/2) has a row, its static and DY numbers stand beside ours; the
last column is A2D2C+'s cost against static (its promise: at most 2x params, 1.5x MAdds).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from a2d2c.layers import CONV_TYPES  # noqa: E402
from a2d2c.models import BACKBONES, build_classifier  # noqa: E402
from a2d2c.models.complexity import count_complexity  # noqa: E402

# DyConv paper, (params, MAdds) static and DY, at 224x224 with 1000 classes (REFERENCES.md).
DYCONV_PAPER = {
    "mobilenetv2_x1_0": ((3.5e6, 300.0e6), (11.1e6, 312.9e6)),
    "mobilenetv2_x0_75": ((2.6e6, 209.0e6), (7.0e6, 217.5e6)),
    "mobilenetv2_x0_5": ((2.0e6, 97.0e6), (4.0e6, 101.4e6)),
    "mobilenetv2_x0_35": ((1.7e6, 59.2e6), (2.8e6, 62.0e6)),
    "mobilenetv3_small": ((2.9e6, 66.0e6), (4.8e6, 68.5e6)),
    "resnet18": ((11.1e6, 1.81e9), (42.7e6, 1.85e9)),
    "resnet10": ((5.2e6, 0.89e9), (18.6e6, 0.91e9)),
}

SETTINGS = {"imagenet": dict(stem="imagenet", num_classes=1000, input_size=(3, 224, 224)),
            "cifar": dict(stem="cifar", num_classes=100, input_size=(3, 32, 32))}


def human(n: float) -> str:
    return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.1f}M"


def measure(backbone: str, conv_type: str, stem: str, num_classes: int, input_size) -> dict:
    with torch.device("meta"):
        model = build_classifier(backbone, conv_type, num_classes=num_classes, stem=stem)
    return count_complexity(model, input_size)


def table(setting: str, backbones=BACKBONES) -> str:
    cfg = SETTINGS[setting]
    c, h, w = cfg["input_size"]
    paper = setting == "imagenet"
    head = ["backbone"] + [f"{t} params / MAdds" for t in CONV_TYPES] + ["a2d2c_plus / static"]
    if paper:
        head += ["DyConv paper static", "DyConv paper DY"]
    lines = [f"#### {h}x{w}, {setting} stem, {cfg['num_classes']} classes", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for backbone in backbones:
        row, counts = [backbone], {}
        for conv_type in CONV_TYPES:
            r = counts[conv_type] = measure(backbone, conv_type, cfg["stem"], cfg["num_classes"],
                                            cfg["input_size"])
            row.append(f"{human(r['params'])} / {human(r['macs'])}")
        plus, static = counts["a2d2c_plus"], counts["static"]
        row.append(f"{plus['params'] / static['params']:.2f}× / {plus['macs'] / static['macs']:.2f}×")
        if paper:
            ref = DYCONV_PAPER.get(backbone)
            row += [f"{human(p)} / {human(m)}" for p, m in ref] if ref else ["", ""]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    text = "\n".join(table(s, args.backbones) for s in args.settings)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
