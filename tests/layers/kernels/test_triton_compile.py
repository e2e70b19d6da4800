"""Every Triton kernel compiles to cubin for sm_80 and sm_90, in fp32, bf16 and fp16, at the
configurations its host wrapper launches: no GPU and no interpreter needed.

The launches are not a hand-kept list. Every ``@triton.jit`` function of the kernel modules that no
other kernel calls is a launched kernel; each is replaced by a recorder, the conv layers run forward
and backward on CPU as if on a GPU (every conv type, dense / strided / depthwise / 1x1, NCHW and
channels_last, with and without bias, small and large maps; plus direct launches of
what no layer launches yet: tap-wise per_sample_conv), and each recorded launch (argument
types and constexpr values) is compiled with ``triton.compile(..., target=GPUTarget("cuda", cc, 32))``.
A kernel no layer launches fails the test: a new kernel is covered once a layer uses it.

The layers launch about 300 distinct configurations; compiling each takes about a second on two
cores, so the test compiles, per kernel and argument types (fp32 / bf16 / fp16), a smallest set of
the launched configurations in which every constexpr value that any launch uses appears (every
K, block size, kernel size, bias and precision branch), on every core.
"""
import importlib
import itertools
import multiprocessing
import os
import re
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from helpers.triton_utils import INTERPRETED

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(INTERPRETED, reason="compiles the real kernels; the interpreter builds none")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from a2d2c.layers import create_conv2d  # noqa: E402
from a2d2c.layers.kernels import fused_evidence, fused_mix, per_sample_conv  # noqa: E402
from a2d2c.layers.kernels import health as kernel_health  # noqa: E402

KERNEL_MODULES = (fused_mix, fused_evidence, per_sample_conv)
TARGETS = (80, 90)
POINTER = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.int32: "*i32",
           torch.int64: "*i64"}


def launched_kernels(module):
    """{name: JITFunction} of the module's kernels that are launched (not called by another kernel)."""
    jitted = {name: fn for name, fn in vars(module).items() if isinstance(fn, JITFunction)}
    called = {name for name in jitted for other in jitted.values()
              if other.__name__ != name and re.search(rf"\b{name}\(", other.src)}
    return {name: fn for name, fn in jitted.items() if name not in called}


def argument_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return POINTER[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"unexpected kernel argument {value!r}")


class Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **constexprs)`` records what it would compile."""

    def __init__(self, fn: JITFunction, launches: set):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        def launch(*args, **constexprs):
            names = self.fn.arg_names
            signature = {name: argument_type(value) for name, value in zip(names, args)}
            assert set(constexprs) == set(names[len(args):]), (self.fn.__name__, constexprs)
            for name in names[len(args):]:
                signature[name] = "constexpr"
            values = tuple((names.index(n), constexprs[n]) for n in names[len(args):])
            self.launches.add((self.fn.__module__, self.fn.__name__, tuple(signature.items()), values))
        return launch


# The layers whose fused paths launch the kernels: (conv type, options, in, out, kernel, stride, groups).
LAYERS = [
    ("a2d2c", {}, 8, 16, 3, 1, 1), ("a2d2c", {}, 8, 16, 3, 2, 1), ("a2d2c", {}, 16, 16, 3, 1, 16),
    ("a2d2c", {}, 8, 160, 1, 1, 1), ("a2d2c", {"num_kernels": 1}, 8, 8, 3, 1, 1),
    ("a2d2c_plus", {}, 8, 16, 3, 1, 1), ("a2d2c_plus", {}, 32, 32, 5, 2, 32), ("a2d2c_plus", {}, 16, 96, 1, 1, 1),
    ("dynamic", {"path": "responses"}, 8, 16, 3, 2, 1), ("dynamic", {"path": "responses"}, 16, 16, 3, 1, 16),
    ("dynamic", {"path": "triton"}, 8, 16, 3, 1, 1), ("dynamic", {"path": "triton"}, 8, 72, 1, 2, 1),
    ("dynamic", {"path": "triton"}, 24, 8, 5, 1, 1),
]
SIZES = (1, 5, 14)  # maps of 1, 25 and 196 positions: every response block shape


def tapwise_per_sample_conv(dtype):
    """per_sample_conv with tap-wise B x K x kh x kw attn (TAPWISE=True), as ODConv will launch it."""
    x, attn, weight = (torch.randn(*shape, dtype=dtype) for shape in ((2, 8, 5, 5), (2, 4, 3, 3), (4, 16, 8, 3, 3)))
    y = per_sample_conv.per_sample_conv(x, attn, weight, (1, 1), (1, 1), (1, 1))
    per_sample_conv.per_sample_conv_backward(torch.ones_like(y), x, attn, weight, (1, 1), (1, 1), (1, 1), (True, False))

def record_launches(monkeypatch) -> set:
    launches = set()
    kernels = {}
    for module in KERNEL_MODULES:
        for name, fn in launched_kernels(module).items():
            monkeypatch.setattr(module, name, Recorder(fn, launches))
            kernels[(module.__name__, name)] = fn
        monkeypatch.setattr(module, "triton_runs_on", lambda t: t.dtype in POINTER and t.is_floating_point())
    # No checks here: the recorders compute nothing (kernels/health.py is tested in test_kernel_fallback.py).
    monkeypatch.setattr(kernel_health.HEALTH, "usable", lambda name, like: True)
    for (conv_type, options, cin, cout, k, stride, groups), size, dtype, channels_last, bias in itertools.product(
            LAYERS, SIZES, (torch.float32, torch.bfloat16, torch.float16), (False, True), (False, True)):
        layer = create_conv2d(conv_type, cin, cout, k, stride=stride, groups=groups, bias=bias, **options).to(dtype)
        x = torch.randn(2, cin, size, size, dtype=dtype)
        if channels_last:
            layer, x = layer.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        out = layer(x.requires_grad_())
        out.backward(torch.ones_like(out))
        with torch.no_grad():
            layer(x)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):  # until a layer (ODConv) launches it
        tapwise_per_sample_conv(dtype)
    missing = [f"{module}.{name}" for module, name in kernels
               if not any(launch[:2] == (module, name) for launch in launches)]
    assert not missing, f"no layer launches {missing}: add one that does to LAYERS"
    return launches


def covering_configurations(launches) -> list:
    """Per (kernel, argument types): a small set of launches in which each constexpr value occurs."""
    by_kernel = defaultdict(list)
    for module, name, signature, constexprs in launches:
        by_kernel[(module, name, signature)].append(constexprs)
    chosen = []
    for (module, name, signature), configurations in sorted(by_kernel.items(), key=repr):
        needed = {value for configuration in configurations for value in configuration}
        while needed:  # greedy set cover
            best = max(sorted(configurations, key=repr), key=lambda c: len(needed & set(c)))
            chosen.append((module, name, signature, best))
            needed -= set(best)
    return chosen


def compile_for(job) -> str:
    """'' when the launch compiles to cubin for the target, else what went wrong (one line)."""
    (module, name, signature, constexprs), cc = job
    fn = getattr(importlib.import_module(module), name)
    source = ASTSource(fn, dict(signature), constexprs={(i,): v for i, v in constexprs})
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", cc, 32))
        return "" if compiled.asm.get("cubin") else f"sm_{cc} {name}: empty cubin"
    except Exception as error:  # noqa: BLE001 - collect them all, then fail with the list
        lines = str(error).strip().splitlines() or ["(no message)"]
        return f"sm_{cc} {name} {dict(signature)} {dict(constexprs)}: {type(error).__name__}: {lines[-1]}"


def test_every_kernel_compiles_for_sm80_and_sm90_at_every_launched_configuration(monkeypatch):
    with monkeypatch.context() as patch:  # the recorders go before compiling (and forking)
        launches = record_launches(patch)
    dtypes = {t for *_, signature, _ in launches for _, t in signature if t in ("*fp32", "*bf16", "*fp16")}
    assert dtypes == {"*fp32", "*bf16", "*fp16"}
    jobs = list(itertools.product(covering_configurations(launches), TARGETS))
    with ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("fork")) as pool:
        failures = [f for f in pool.map(compile_for, jobs) if f]
    assert not failures, f"{len(failures)} of {len(jobs)} compiles failed:\n" + "\n".join(failures[:10])
