#!/usr/bin/env python
"""Speed of every conv type against static, in one process.

    # the issue's setting on a GPU: whole models and layers, train and inference
    python scripts/benchmark.py --models resnet18 mobilenetv2_x1_0 --layers --batch 256 \
        --dtype bf16 --channels-last --reference --out docs/bench
    # a small CPU run (what the tests do)
    python scripts/benchmark.py --models resnet10 --layers --batch 4 --image-size 32 --iters 2

Each (model or layer) x conv type x mode is timed after ``--warmup`` steps, ``--iters`` times:
CUDA events on a GPU, a synchronised wall clock on the CPU; medians are reported, with the
ratio to static taken in the same run. ``--reference`` adds the usual dynamic-conv
implementation (per-sample kernels kept by autograd, grouped conv: timm's CondConv2d and the
DyConv re-implementations) so our speed-up over it shows in the same run; ``--eager-mix`` adds
a2d2c and a2d2c_plus with the fused Triton evidence and mixing turned off (A2D2C_FUSED_MIX=0),
the same comparison for them. Peak memory is the
CUDA allocator's peak (not measured on CPU). Writes ``bench.json``, ``bench.md`` and, with
matplotlib, ``bench.png`` under ``--out``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from a2d2c.layers import CONV_TYPES, create_conv2d  # noqa: E402
from a2d2c.layers.dynamic_conv import PATHS  # noqa: E402
from a2d2c.layers.kernels.fused_mix import fused_mix_applies  # noqa: E402
from a2d2c.models import build_classifier  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# (name, in, out, kernel, stride, groups, input map at 224x224)
LAYERS = [
    ("resnet18.layer1.conv3x3", 64, 64, 3, 1, 1, 56),
    ("resnet18.layer2.conv3x3", 128, 128, 3, 1, 1, 28),
    ("resnet18.layer3.conv3x3", 256, 256, 3, 1, 1, 14),
    ("resnet18.layer4.conv3x3", 512, 512, 3, 1, 1, 7),
    ("mobilenetv2.expand1x1_24_144", 24, 144, 1, 1, 1, 56),
    ("mobilenetv2.dw3x3_144", 144, 144, 3, 1, 144, 56),
    ("mobilenetv2.project1x1_960_160", 960, 160, 1, 1, 1, 7),
    ("mobilenetv2.dw3x3_960", 960, 960, 3, 1, 960, 7),
]


class Timer:
    """Milliseconds of a callable: CUDA events on a GPU, synchronised perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


# "new against old": each conv type's row is compared with this variant's row of the same run
BASELINES = {"dynamic": "dynamic (reference)", "a2d2c": "a2d2c (eager mix)", "a2d2c_plus": "a2d2c_plus (eager mix)"}


def conv_variants(conv_types, reference: bool, paths=(), eager_mix: bool = False):
    """(label, conv type, options, environment) to time. 'dynamic (reference)' is the peers'
    implementation, 'dynamic (PATH)' forces one of DynamicConv2d's computation paths, and
    'X (eager mix)' runs X with the fused mixing kernels off."""
    variants = [(t, t, {}, {}) for t in conv_types]
    if "dynamic" in conv_types:
        variants += [(f"dynamic ({p})", "dynamic", {"path": p}, {}) for p in paths]
    if reference and "dynamic" in conv_types:
        variants.append(("dynamic (reference)", "dynamic", {"path": "reference"}, {}))
    if eager_mix:
        variants += [(f"{t} (eager mix)", t, {}, {"A2D2C_FUSED_MIX": "0"})
                     for t in conv_types if t in ("a2d2c", "a2d2c_plus")]
    return variants


def environ(values: dict):
    """os.environ with `values` set inside the block, restored after it."""
    return mock.patch.dict(os.environ, values)


def saved_for_backward_bytes(module: nn.Module, inputs: torch.Tensor, autocast) -> int:
    """Bytes of the tensors autograd keeps for backward in one training forward: unique storages,
    the module's parameters and buffers excluded. Most of training's GPU memory, and the same on
    every device, so a CPU measures it."""
    own = {t.untyped_storage().data_ptr() for t in itertools.chain(module.parameters(), module.buffers())}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    module.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        module(inputs)
    return sum(storages.values())


def measure(module: nn.Module, inputs: torch.Tensor, mode: str, args, device,
            is_model: bool) -> dict:
    """Median step time, img/s and peak memory of a train step or an inference forward."""
    timer = Timer(device)
    dtype = DTYPES[args.dtype]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    module.train(mode == "train")
    run = torch.compile(module) if args.compile else module
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9) if mode == "train" else None
    target = torch.randint(0, 1000, (inputs.shape[0],), device=device)

    def step():
        if mode == "train":
            with autocast:
                out = run(inputs)
                loss = F.cross_entropy(out.float(), target) if is_model else out.float().square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), autocast:
                run(inputs)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = [timer(step) for _ in range(args.iters)]
    ms = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    saved = (saved_for_backward_bytes(module, inputs, autocast) / inputs.shape[0] / 2**20
             if mode == "train" else None)
    return {"step_ms": ms, "img_per_s": inputs.shape[0] / ms * 1e3, "peak_mib": peak, "saved_mib_per_image": saved}


def bench_models(args, device, variants):
    rows = []
    for name in args.models:
        for label, conv_type, opts, env in variants:
            model = build_classifier(name, conv_type, num_classes=1000,
                                     stem="imagenet" if args.image_size >= 64 else "cifar", **opts)
            model = model.to(device)
            x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
            if args.channels_last:
                model, x = model.to(memory_format=torch.channels_last), x.contiguous(
                    memory_format=torch.channels_last)
            for mode in args.modes:
                with environ(env):
                    rows.append({"kind": "model", "name": name, "conv": label, "mode": mode,
                                 **measure(model, x, mode, args, device, is_model=True)})
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def bench_layers(args, device, variants):
    rows = []
    scale = args.image_size / 224
    for name, cin, cout, k, stride, groups, size in LAYERS:
        hw = max(1, round(size * scale))
        for label, conv_type, opts, env in variants:
            layer = create_conv2d(conv_type, cin, cout, k, stride=stride, groups=groups, **opts)
            layer = layer.to(device)
            x = torch.randn(args.batch, cin, hw, hw, device=device)
            if args.channels_last:
                layer, x = layer.to(memory_format=torch.channels_last), x.contiguous(
                    memory_format=torch.channels_last)
            for mode in args.modes:
                with environ(env):
                    rows.append({"kind": "layer", "name": f"{name} @{hw}x{hw}", "conv": label,
                                 "mode": mode, **measure(layer, x, mode, args, device, is_model=False)})
    return rows


def add_ratios(rows):
    """img/s and memory against static, and each conv type against its old implementation
    (BASELINES), for the same model/layer and mode, from this run."""
    by_conv = lambda conv: {(r["kind"], r["name"], r["mode"]): r for r in rows if r["conv"] == conv}  # noqa: E731
    static = by_conv("static")
    baselines = {conv: by_conv(old) for conv, old in BASELINES.items()}
    for r in rows:
        key = (r["kind"], r["name"], r["mode"])
        ref = baselines[r["conv"]].get(key) if r["conv"] in baselines else None
        r["speed_vs_reference"] = r["img_per_s"] / ref["img_per_s"] if ref else None
        base = static.get(key)
        r["speed_vs_static"] = r["img_per_s"] / base["img_per_s"] if base else None
        r["memory_vs_static"] = (r["peak_mib"] / base["peak_mib"]
                                 if base and r["peak_mib"] and base["peak_mib"] else None)
        r["saved_vs_static"] = (r["saved_mib_per_image"] / base["saved_mib_per_image"]
                                if base and r["saved_mib_per_image"] and base["saved_mib_per_image"] else None)
    return rows


def environment(args, device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    probe = torch.empty(1, 1, 1, 1, 1, device=device)
    return {"device": f"{device.type}: {name}", "torch": torch.__version__,
            "fused_mix": fused_mix_applies(probe, probe[:, :, 0, 0, 0]),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
            "threads": torch.get_num_threads(), **{k: v for k, v in vars(args).items() if k != "out"}}


def markdown(rows, env) -> str:
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    lines = [f"Device: {env['device']}; torch {env['torch']}; {env['date']}; batch {env['batch']}, "
             f"{env['image_size']}x{env['image_size']}, {env['dtype']}, channels_last="
             f"{env['channels_last']}, compile={env['compile']}", "",
             f"Command: `{env['command']}`", "",
             "× old: dynamic against the per-sample-kernel grouped conv (`dynamic (reference)`), a2d2c and "
             "a2d2c_plus against their eager mixing (`(eager mix)`)."
             + ("" if env["fused_mix"] else " The fused mixing kernels do not run on this device: there, a2d2c "
                "and its eager mix are the same computation."), "",
             "Saved: the tensors autograd keeps for backward per image in a training forward (MiB; "
             "parameters excluded), on any device.", "",
             "| kind | name | conv | mode | step ms | img/s | × static | × old | peak MiB | mem × static "
             "| saved MiB/img | saved × static |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['name']} | {r['conv']} | {r['mode']} | "
                     f"{r['step_ms']:.2f} | {r['img_per_s']:.1f} | {fmt(r['speed_vs_static'], '.2f')} | "
                     f"{fmt(r['speed_vs_reference'], '.2f')} | "
                     f"{fmt(r['peak_mib'], '.0f')} | {fmt(r['memory_vs_static'], '.2f')} | "
                     f"{fmt(r['saved_mib_per_image'], '.1f')} | {fmt(r['saved_vs_static'], '.2f')} |")
    return "\n".join(lines) + "\n"


def plot(rows, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    models = [r for r in rows if r["kind"] == "model" and r["mode"] == "train"]
    if not models:
        return
    labels = [f"{r['name']}\n{r['conv']}" for r in models]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(models)), 4))
    ax.bar(range(len(models)), [r["speed_vs_static"] or 0 for r in models])
    ax.set_xticks(range(len(models)), labels, rotation=60, ha="right", fontsize=7)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_ylabel("training throughput / static")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=["resnet18", "mobilenetv2_x1_0"])
    p.add_argument("--layers", action="store_true", help="also time the ResNet-18/MobileNetV2 layer shapes")
    p.add_argument("--conv-types", nargs="+", default=list(CONV_TYPES), choices=CONV_TYPES)
    p.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--reference", action="store_true",
                   help="also time the usual per-sample-kernel grouped-conv implementation")
    p.add_argument("--paths", nargs="*", default=[], choices=[p for p in PATHS if p != "reference"],
                   help="also time dynamic convs forced onto these computation paths")
    p.add_argument("--eager-mix", action="store_true",
                   help="also time a2d2c / a2d2c_plus with the fused Triton evidence and mixing off")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("bench"))
    return p.parse_args(argv)


def main(argv=None) -> list:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    variants = conv_variants(args.conv_types, args.reference, args.paths, args.eager_mix)
    rows = bench_models(args, device, variants)
    if args.layers:
        rows += bench_layers(args, device, variants)
    add_ratios(rows)
    env = environment(args, device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    text = markdown(rows, env)
    (args.out / "bench.md").write_text(text)
    plot(rows, args.out / "bench.png")
    print(text)
    return rows


if __name__ == "__main__":
    main()
