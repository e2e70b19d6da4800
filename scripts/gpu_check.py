#!/usr/bin/env python
"""GPU acceptance in one command: the CUDA tests, then each conv type's training throughput and
peak memory against static, in one process, each beside its target (docs/benchmarks.md).

    python scripts/gpu_check.py --out gpu_check/        # one H100 / H200: about 5 min
    python scripts/gpu_check.py --smoke --out /tmp/gc    # CPU, tiny sizes: proves the wiring only

Writes ``<out>/gpu_check.md`` and ``<out>/gpu_check.json``; exits 0 only when no CUDA test failed
and every target holds (with --smoke: when everything ran; a CPU judges no target).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from benchmark import add_ratios, bench_models  # noqa: E402

from a2d2c.layers import CONV_TYPES  # noqa: E402

CUDA_TESTS = ("tests/layers/test_layers_cuda.py", "tests/layers/kernels/test_per_sample_conv.py",
              "tests/layers/kernels/test_fused_mix.py", "tests/layers/kernels/test_fused_evidence.py",
              "tests/layers/kernels/test_kernel_fallback.py", "tests/data/test_gpu_decode.py")

# (conv type, backbone) -> (least training throughput, most peak memory), both against static in the
# same process: H100-class GPU, bf16 autocast, channels_last, batch 256, 224x224 (docs/benchmarks.md).
TARGETS = {
    ("dynamic", "resnet18"): (0.5, 1.5),
    ("dynamic", "mobilenetv2_x1_0"): (0.4, 1.5),
    ("a2d2c_plus", "resnet18"): (0.7, 1.5),
    ("a2d2c", "resnet18"): (0.3, None),
}
FULL = dict(batch=256, image_size=224, dtype="bf16", channels_last=True, warmup=3, iters=10)
SMOKE = dict(batch=2, image_size=32, dtype="fp32", channels_last=True, warmup=1, iters=1)


def run_cuda_tests(out: Path) -> dict:
    """pytest -m gpu on the CUDA test files: counts of passed / failed / skipped, and the log."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           "-rs", *CUDA_TESTS], cwd=ROOT, capture_output=True, text=True)
    (out / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "(no output)"
    counts = {word: 0 for word in ("passed", "failed", "skipped", "error")}
    for part in summary.replace("=", "").split(","):
        fields = part.split()
        if len(fields) >= 2 and fields[0].isdigit():
            counts["error" if fields[1].startswith("error") else fields[1]] = int(fields[0])
    return {"summary": summary, "returncode": proc.returncode, **counts}


def run_benchmark(settings: dict, device: torch.device) -> list:
    backbones = sorted({backbone for _, backbone in TARGETS})
    args = SimpleNamespace(models=backbones, modes=["train"], compile=False, **settings)
    # Every conv type is measured; those in TARGETS are judged, the others (condconv, odconv) only reported.
    variants = [(conv, conv, {}, {}) for conv in CONV_TYPES]
    return add_ratios(bench_models(args, device, variants))


def judge(rows: list, judged: bool) -> list:
    """One verdict per target: measured ratios beside the bounds; ok is None where nothing is judged."""
    verdicts = []
    for (conv, backbone), (min_speed, max_memory) in TARGETS.items():
        row = next(r for r in rows if r["conv"] == conv and r["name"] == backbone and r["mode"] == "train")
        speed, memory = row["speed_vs_static"], row["memory_vs_static"]
        ok = None
        if judged:
            ok = speed >= min_speed and (max_memory is None or (memory is not None and memory <= max_memory))
        verdicts.append({"conv": conv, "backbone": backbone, "speed_vs_static": speed, "min_speed": min_speed,
                         "memory_vs_static": memory, "max_memory": max_memory,
                         "saved_vs_static": row.get("saved_vs_static"), "ok": ok})
    return verdicts


def markdown(report: dict) -> str:
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    env, tests = report["environment"], report["cuda_tests"]
    verdict = ("smoke run: wiring only, no target judged" if report["smoke"]
               else "PASS" if report["ok"] else "FAIL")
    lines = [f"# GPU acceptance: {verdict}", "",
             f"Device: {env['device']}; torch {env['torch']}; {env['date']}; batch {env['batch']}, "
             f"{env['image_size']}x{env['image_size']}, {env['dtype']}, channels_last={env['channels_last']}",
             "", f"Command: `{env['command']}`", "", f"CUDA tests: {tests['summary']}", "",
             "| conv | backbone | train img/s × static | target | peak memory × static | target | saved × static "
             "| holds |", "|---|---|---|---|---|---|---|---|"]
    for v in report["targets"]:
        holds = "not judged" if v["ok"] is None else ("yes" if v["ok"] else "**no**")
        lines.append(f"| {v['conv']} | {v['backbone']} | {fmt(v['speed_vs_static'], '.2f')} | ≥ {v['min_speed']} | "
                     f"{fmt(v['memory_vs_static'], '.2f')} | {'' if v['max_memory'] is None else '≤ %s' % v['max_memory']} "
                     f"| {fmt(v['saved_vs_static'], '.2f')} | {holds} |")
    lines += ["", "Every conv type, measured (no target for those not above):", "",
              "| conv | backbone | train img/s | × static | peak memory × static |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['conv']} | {r['name']} | {fmt(r.get('img_per_s'), '.0f')} | "
                     f"{fmt(r.get('speed_vs_static'), '.2f')} | {fmt(r.get('memory_vs_static'), '.2f')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device: wiring only, no verdict")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        print("error: no CUDA device here; the acceptance needs one (--smoke runs the wiring on CPU)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    settings = SMOKE if args.smoke else FULL
    tests = run_cuda_tests(args.out)
    rows = run_benchmark(settings, device)
    judged = not args.smoke
    verdicts = judge(rows, judged)
    tests_ok = tests["failed"] == 0 and tests["error"] == 0 and tests["returncode"] in (0, 5)
    ok = tests_ok and (all(v["ok"] for v in verdicts) if judged else True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {"ok": ok, "smoke": args.smoke, "cuda_tests": tests, "targets": verdicts, "rows": rows,
              "environment": {"device": f"{device.type}: {name}", "torch": torch.__version__,
                              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                              "command": " ".join(["python scripts/gpu_check.py", *(argv or sys.argv[1:])]),
                              **settings}}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
