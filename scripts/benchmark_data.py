#!/usr/bin/env python
"""ImageNet input pipeline throughput: GPU JPEG decode + GPU transforms vs the CPU DataLoader.

    python scripts/benchmark_data.py --images 4096 --workers 8 --batch 256      # on a GPU machine
    python scripts/benchmark_data.py --images 32 --workers 0 --batch 8 --device cpu

Generates a JPEG ImageFolder of ImageNet-like images (about 500x375, quality 90) under
``--root`` (kept and reused), then times one pass of each pipeline over it, the batches
landing on ``--device`` as normalised float tensors: img/s, median batch ms. Writes
``data_bench.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from a2d2c.data.gpu_decode import EncodedImageFolder, GpuImagePipeline, collate_encoded  # noqa: E402
from a2d2c.data.imagenet import imagenet_transforms  # noqa: E402


def make_jpeg_folder(root: Path, images: int, classes: int = 8, seed: int = 0) -> Path:
    """Smooth random images with noise, so that JPEG sizes resemble photos (~100 KB)."""
    rng = np.random.default_rng(seed)
    for i in range(images):
        path = root / f"class{i % classes:03d}" / f"{i:06d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        w, h = (500, 375) if i % 3 else (375, 500)
        base = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((w, h))
        noisy = np.asarray(base, dtype=np.int16) + rng.integers(-20, 20, (h, w, 3))
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return root


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_pass(loader, to_device, device) -> dict:
    times, count = [], 0
    t_start = time.perf_counter()
    t0 = t_start
    for batch in loader:
        images = to_device(batch)
        sync(device)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        t0 = t1
        count += images.shape[0]
    total = time.perf_counter() - t_start
    return {"img_per_s": count / total, "batch_ms_median": statistics.median(times) * 1e3,
            "images": count}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path(".cache/jpeg_bench"))
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("bench"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    make_jpeg_folder(args.root, args.images)
    common = dict(batch_size=args.batch, num_workers=args.workers, shuffle=True, drop_last=False,
                  pin_memory=device.type == "cuda")

    cpu_set = datasets.ImageFolder(str(args.root), transform=imagenet_transforms(True, args.image_size))
    cpu = time_pass(DataLoader(cpu_set, **common),
                    lambda b: b[0].to(device, non_blocking=True), device)
    pipeline = GpuImagePipeline(train=True, image_size=args.image_size)
    gpu = time_pass(DataLoader(EncodedImageFolder(str(args.root)), collate_fn=collate_encoded, **common),
                    lambda b: pipeline(b[0], device), device)
    result = {"device": str(device) + (f": {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
              "torch": torch.__version__, "workers": args.workers, "batch": args.batch,
              "cpu_dataloader": cpu, "device_decode": gpu, "speedup": gpu["img_per_s"] / cpu["img_per_s"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_bench.json").write_text(json.dumps(result, indent=2))
    print(f"| pipeline | img/s | batch ms (median) |\n|---|---|---|\n"
          f"| CPU DataLoader ({args.workers} workers, PIL + transforms v2) | {cpu['img_per_s']:.0f} | "
          f"{cpu['batch_ms_median']:.1f} |\n| decode_jpeg + transforms on {device.type} | "
          f"{gpu['img_per_s']:.0f} | {gpu['batch_ms_median']:.1f} |\n\nspeed-up: {result['speedup']:.2f}x "
          f"on {result['device']}")
    return result


if __name__ == "__main__":
    main()
