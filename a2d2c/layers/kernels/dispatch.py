"""Each fused operation as the layers call it: the Triton kernel where it applies and has passed its
first-use check (health.py), else the eager formula (eager.py). A kernel that raises is disabled
for that device and dtype and the eager result returned: a failing kernel never stops a run, and
never returns its garbage (health.py compares it with the eager result first).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..functional import conv_responses
from .eager import mix_responses_eager, response_evidence_eager
from .fused_evidence import fused_evidence, fused_evidence_applies
from .fused_mix import eager_mix_backward, fused_mix, fused_mix_applies, fused_mix_backward
from .health import HEALTH


def mix_responses(responses: torch.Tensor, attn: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum_k attn_k (R_k + b_k).

    responses: B x K x O x H x W; attn: B x K (per sample) or B x K x H x W (per position).
    On a GPU this runs the fused Triton kernels of ``fused_mix`` once they pass their check
    (health.py); elsewhere, or when they fail, the eager formula.
    """
    if fused_mix_applies(responses, attn) and HEALTH.usable("fused_mix", responses):
        try:
            return fused_mix(responses, attn, bias)
        except Exception as error:  # noqa: BLE001 - a failing kernel falls back, it never stops the run
            HEALTH.disable("fused_mix", responses, error)
    return mix_responses_eager(responses, attn, bias)


def response_evidence(responses: torch.Tensor) -> torch.Tensor:
    """B x K x O x H x W -> B x 2K x H x W: [channel-mean of each R_k, channel-max of each R_k].

    On a GPU, one Triton pass (fused_evidence.py) once it passes its check (health.py);
    elsewhere, or when it fails, the eager formula (eager.py).
    """
    if fused_evidence_applies(responses) and HEALTH.usable("fused_evidence", responses):
        try:
            return fused_evidence(responses)
        except Exception as error:  # noqa: BLE001 - a failing kernel falls back, it never stops the run
            HEALTH.disable("fused_evidence", responses, error)
    return response_evidence_eager(responses)


class _RecomputedMix(torch.autograd.Function):
    """``mix_responses(R, attn, bias)`` for R = W * x, whose backward recomputes R from x and W
    instead of keeping it: R is K output maps per sample, x (kept by the conv anyway) one.

    R's gradient (attn . g) still flows back through the conv that made it; only the attention's
    gradient, sum_o R g, needs R itself. It costs one more K-kernel conv per backward.
    """

    @staticmethod
    def forward(ctx, responses, attn, bias, x, weight, conv_args):
        ctx.conv_args = conv_args
        ctx.autocast = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        ctx.save_for_backward(attn, bias, x, weight)
        return mix_responses(responses, attn, bias)

    @staticmethod
    def backward(ctx, grad_y):
        attn, bias, x, weight = ctx.saved_tensors
        with torch.no_grad(), torch.autocast(x.device.type, dtype=ctx.autocast, enabled=ctx.autocast is not None):
            responses = conv_responses(x, weight, *ctx.conv_args)
        needs = ctx.needs_input_grad[:3]
        if fused_mix_applies(responses, attn) and HEALTH.usable("fused_mix", responses):
            grads = fused_mix_backward(responses, attn, bias, grad_y, needs)
        else:
            grads = eager_mix_backward(responses, attn, bias, grad_y, needs)
        return (*grads, None, None, None)


def recomputed_mix(responses: torch.Tensor, attn: torch.Tensor, bias: Optional[torch.Tensor], x: torch.Tensor,
                   weight: torch.Tensor, stride, padding, dilation, groups: int) -> torch.Tensor:
    """``mix_responses`` of ``responses = conv_responses(x, weight, ...)`` that keeps x, not the
    responses, for backward (plain ``mix_responses`` where no gradient is needed or a graph is captured)."""
    if not torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing() \
            or torch.onnx.is_in_onnx_export():
        return mix_responses(responses, attn, bias)
    return _RecomputedMix.apply(responses, attn, bias, x, weight, (stride, padding, dilation, groups))
