"""Where the hand-written Triton kernels (fused_mix, fused_evidence, per_sample_conv) run.

On CUDA tensors when Triton is importable; on CPU tensors only under Triton's interpreter
(``TRITON_INTERPRET=1``, how the tests check the kernels without a GPU). Never while a graph is
being captured (torch.compile, tracing, ONNX export): those take the plain tensor ops, which
Inductor fuses itself and exporters understand.
"""
from __future__ import annotations

import os

import torch

try:
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401
except ImportError:  # pragma: no cover - triton ships with torch's Linux wheels
    triton = tl = None

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_runs_on(t: torch.Tensor) -> bool:
    """Triton is importable and ``t`` is on a device its kernels run on."""
    if triton is None or t.dtype not in FLOAT_DTYPES:
        return False
    return t.device.type == "cpu" if interpreting() else t.is_cuda


def capturing_graph() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def response_blocks(out_channels: int, positions: int):
    """(BLOCK_O, BLOCK_P) of the kernels over B x K x O x H x W responses: at most 64 positions by 4096 / 64."""
    block_p = min(64, triton.next_power_of_2(positions))
    return min(max(4096 // block_p, 1), triton.next_power_of_2(out_channels)), block_p


def response_layout(responses: torch.Tensor) -> torch.memory_format:
    """channels_last for maps computed from channels_last responses (O innermost), else contiguous."""
    return torch.channels_last if responses.stride(2) == 1 and responses.shape[2] > 1 else torch.contiguous_format


def fused_responses_enabled() -> bool:
    """A2D2C_FUSED_MIX=0 turns off the fused kernels of the K-responses pipeline (evidence and mixing)."""
    return os.environ.get("A2D2C_FUSED_MIX", "1") != "0"
