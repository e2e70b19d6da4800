"""Fused Triton kernels that can never stop a run or change its numbers.

The first time a fused kernel would run in a process for a (device, dtype), it runs once on a small
problem, forward and backward, against the eager formula. If it raises or disagrees beyond float
tolerance, one warning names the kernel and what went wrong, and the eager formula (or, for the
per-sample conv, the grouped conv) serves every later call in the process. A launch that raises
later falls back the same way, at that call. A miscompiled kernel that writes nothing, or a PTX or
launch failure on a new GPU, thus costs speed, never the run or its numbers.

Each kernel module registers its check (``HEALTH.register``); the callers ask ``HEALTH.usable``
before taking the fused path and report a failure with ``HEALTH.disable``.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, Optional, Tuple

import torch

log = logging.getLogger(__name__)

# Largest relative error (Frobenius) a correct kernel shows against the eager formula on the check's
# problem: fp32 (TF32 in the per-sample conv) and the half types' rounding of the outputs.
TOLERANCE = {torch.float32: 5e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def compare(name_pairs) -> str:
    """'' when every (name, fused, eager) agrees within the tolerance of the fused tensor's dtype, else what differs."""
    for name, fused, eager in name_pairs:
        err = relative_error(fused, eager)
        if not err <= TOLERANCE.get(fused.dtype, 5e-3):
            return f"disagrees with the eager formula ({name}: relative error {err:.3g})"
    return ""


class KernelHealth:
    """Per (kernel, device, dtype): True once checked and correct, False once it failed."""

    def __init__(self):
        self.checks: Dict[str, Callable[[torch.device, torch.dtype], str]] = {}
        self.state: Dict[Tuple[str, str, torch.dtype], Optional[bool]] = {}
        self.failures: Dict[Tuple[str, str, torch.dtype], str] = {}

    def register(self, name: str, check: Callable[[torch.device, torch.dtype], str]) -> None:
        """``check(device, dtype)`` runs the kernel on a small problem: '' if correct, else why not."""
        self.checks[name] = check

    def usable(self, name: str, like: torch.Tensor) -> bool:
        key = (name, str(like.device), like.dtype)
        if key not in self.state:
            self.state[key] = None  # checking: a failure inside the check lands in self.failures
            try:
                # The first use may come inside no_grad, inference_mode, autocast or an autograd
                # Function's forward: the check runs its own forward and backward regardless.
                with torch.inference_mode(False), torch.enable_grad(), \
                        torch.autocast(like.device.type, enabled=False):
                    problem = self.checks[name](like.device, like.dtype)
            except Exception as error:  # noqa: BLE001 - any failure of the kernel means: do not use it
                problem = f"failed: {type(error).__name__}: {_first_line(error)}"
            # A backward kernel that raised inside the check fell back to eager there, so its
            # gradients compared equal: what it reported still fails the check.
            problem = self.failures.pop(key, "") or problem
            self.state[key] = not problem
            if problem:
                self._warn(key, problem)
        return bool(self.state[key])

    def disable(self, name: str, like: torch.Tensor, error: BaseException) -> None:
        """A launch raised: fall back from now on (reported by the check when it runs inside one)."""
        key = (name, str(like.device), like.dtype)
        problem = f"failed: {type(error).__name__}: {_first_line(error)}"
        if key in self.state and self.state[key] is None:
            self.failures[key] = problem
            return
        was_usable = self.state.get(key, True)
        self.state[key] = False
        if was_usable:
            self._warn(key, problem)

    def reset(self) -> None:
        self.state.clear()
        self.failures.clear()

    @staticmethod
    def _warn(key, problem: str) -> None:
        name, device, dtype = key
        fallback = "the grouped conv" if name == "per_sample_conv" else "the eager formula"
        log.warning("fused kernel %s (%s on %s) %s; using %s for the rest of this process",
                    name, str(dtype).replace("torch.", ""), device, problem, fallback)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


HEALTH = KernelHealth()
