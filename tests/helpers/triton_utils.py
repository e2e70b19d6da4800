"""Running Triton kernel tests on CPU, under Triton's interpreter, and what those tests share.

TRITON_INTERPRET=1 must be set before triton is first imported (it decides how every
@triton.jit function, triton's own included, is built), so a test file reruns itself in a fresh
process with it set: ``rerun_under_interpreter(__file__)`` in the ordinary run, and the
``interpreted`` tests execute only inside that process.
"""
import os
import subprocess
import sys
from helpers.paths import REPO

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="runs in its file's interpreter process")


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def responses_like_a_conv(b, k, o, h, w, channels_last, dtype=torch.float32, device="cpu"):
    """B x K x O x H x W as conv_responses returns it: a view of a (K*O)-channel conv output."""
    out = torch.randn(b, k * o, h, w, device=device, dtype=dtype)
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    return out.view(b, k, o, h, w)


def rerun_under_interpreter(test_file: str) -> None:
    if INTERPRETED:
        pytest.skip("this is the interpreted run")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("A2D2C_FUSED_MIX", None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
