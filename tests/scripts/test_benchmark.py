"""scripts/benchmark.py runs on CPU with small shapes and reports every conv type vs static."""
import importlib.util
import json
import os

from a2d2c.layers import CONV_TYPES
from helpers.paths import REPO

SCRIPT = REPO / "scripts" / "benchmark.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_reports_every_conv_type_against_static(tmp_path):
    bench = load_benchmark()
    bench.main(["--models", "resnet10", "--layers", "--batch", "2", "--image-size", "16",
                "--warmup", "1", "--iters", "2", "--dtype", "fp32", "--channels-last",
                "--reference", "--eager-mix", "--device", "cpu", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = data["rows"]
    assert data["environment"]["device"].startswith("cpu")
    labels = set(CONV_TYPES) | {"dynamic (reference)", "a2d2c (eager mix)", "a2d2c_plus (eager mix)"}
    model_rows = [r for r in rows if r["kind"] == "model"]
    assert {(r["conv"], r["mode"]) for r in model_rows} == {(c, m) for c in labels for m in ("train", "infer")}
    layer_names = {r["name"] for r in rows if r["kind"] == "layer"}
    assert len(layer_names) == len(bench.LAYERS)
    for r in rows:
        assert r["step_ms"] > 0 and r["img_per_s"] > 0
        assert r["speed_vs_static"] is not None
        if r["conv"] == "static":
            assert r["speed_vs_static"] == 1.0
        assert (r["speed_vs_reference"] is not None) == (r["conv"] in ("dynamic", "a2d2c", "a2d2c_plus"))
    assert data["environment"]["fused_mix"] is False  # CPU tensors, no interpreter
    table = (tmp_path / "bench.md").read_text()
    assert "a2d2c and its eager mix are the same computation" in table
    assert "| model | resnet10 | dynamic (reference) | train |" in table


def test_eager_mix_variants_run_with_the_fused_kernels_off(monkeypatch):
    bench = load_benchmark()
    monkeypatch.delenv("A2D2C_FUSED_MIX", raising=False)
    variants = {label: env for label, _, _, env in bench.conv_variants(CONV_TYPES, False, (), eager_mix=True)}
    assert variants["a2d2c (eager mix)"] == {"A2D2C_FUSED_MIX": "0"} and variants["a2d2c"] == {}
    with bench.environ(variants["a2d2c_plus (eager mix)"]):
        assert os.environ["A2D2C_FUSED_MIX"] == "0"  # what fused_mix_applies reads on every call
    assert "A2D2C_FUSED_MIX" not in os.environ


def test_benchmark_and_the_layers_import_without_the_config_and_tracking_stack():
    """A bare GPU box (torch, torchvision, timm, triton) can run scripts/benchmark.py: no hydra, omegaconf,
    wandb or pycocotools needed for the layers, the models or the benchmark."""
    import subprocess
    import sys
    guard = (
        "import builtins, importlib.util, sys\n"
        "real = builtins.__import__\n"
        "def guarded(name, *args, **kwargs):\n"
        "    if name.split('.')[0] in ('hydra', 'omegaconf', 'wandb', 'pycocotools'):\n"
        "        raise ImportError('not installed: ' + name)\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = guarded\n"
        f"spec = importlib.util.spec_from_file_location('benchmark', {str(SCRIPT)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "import a2d2c.layers, a2d2c.models\n"
    )
    run = subprocess.run([sys.executable, "-c", guard], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def test_saved_bytes_count_each_storage_once_and_no_parameters():
    import contextlib
    import torch
    saved = load_benchmark().saved_for_backward_bytes
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 10, 10)
    # conv saves its input (the weight is a parameter); relu's output is one more map
    assert saved(conv, x, contextlib.nullcontext()) == x.numel() * 4
    assert saved(torch.nn.Sequential(conv, torch.nn.ReLU()), x, contextlib.nullcontext()) == 2 * x.numel() * 4


def test_depthwise_a2d2c_plus_keeps_one_map_for_backward_not_its_k_experts():
    import contextlib
    import torch
    from a2d2c.layers import create_conv2d
    saved = load_benchmark().saved_for_backward_bytes
    x = torch.randn(2, 64, 14, 14)
    static = saved(create_conv2d("static", 64, 64, 3, groups=64), x, contextlib.nullcontext())
    plus = saved(create_conv2d("a2d2c_plus", 64, 64, 3, groups=64), x, contextlib.nullcontext())
    # the input, x_c . (alpha^T v u)'s coefficient map and the K-channel attention maps: about 2.3x;
    # keeping the K scaled inputs and their mix was 6.3x
    assert plus <= 2.5 * static


def test_a2d2c_keeps_its_input_for_backward_not_its_k_responses():
    import contextlib
    import torch
    from a2d2c.layers import create_conv2d
    saved = load_benchmark().saved_for_backward_bytes
    x = torch.randn(2, 32, 14, 14)
    static = saved(create_conv2d("static", 32, 32, 3), x, contextlib.nullcontext())
    # the input (kept by the conv anyway) and a few K-channel attention maps: 1.6x at 32 channels
    assert saved(create_conv2d("a2d2c", 32, 32, 3, recompute_responses=True), x, contextlib.nullcontext()) <= 2 * static
    kept = saved(create_conv2d("a2d2c", 32, 32, 3), x, contextlib.nullcontext())
    assert kept >= 4 * static  # the default keeps the K = 4 responses


def test_recomputing_the_responses_changes_no_number():
    import torch
    from a2d2c.layers import create_conv2d
    torch.manual_seed(0)
    grads = []
    for recompute in (True, False):
        torch.manual_seed(0)
        m = create_conv2d("a2d2c", 6, 8, 3, stride=2, bias=True, recompute_responses=recompute).double()
        x = torch.randn(3, 6, 9, 8, dtype=torch.float64, requires_grad=True)
        out = m(x)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out))
        grads.append([out.detach(), x.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
