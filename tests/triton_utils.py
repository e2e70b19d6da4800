"""Running Triton kernel tests on CPU, under Triton's interpreter.

TRITON_INTERPRET=1 must be set before triton is first imported (it decides how every
@triton.jit function, triton's own included, is built), so a test file reruns itself in a fresh
process with it set: ``rerun_under_interpreter(__file__)`` in the ordinary run, and the
``interpreted`` tests execute only inside that process.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="runs in its file's interpreter process")


def rerun_under_interpreter(test_file: str) -> None:
    if INTERPRETED:
        pytest.skip("this is the interpreted run")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("A2D2C_FUSED_MIX", None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
                         cwd=Path(test_file).parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
