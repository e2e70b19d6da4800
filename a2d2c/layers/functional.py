"""Stateless pieces shared by the dynamic conv layers.

Two ways to compute a convolution whose kernel is a mixture of K candidate kernels:

* ``aggregated_conv`` (aggregated_conv.py): build one kernel per sample, ``W_b = sum_k pi_bk W_k``, and run all
  samples as one grouped convolution (groups = B * g). Cheap in FLOPs, but the grouped conv is
  slow when the map is small and the per-sample kernels are large.
* ``conv_responses`` + a mix: run the K kernels as one dense convolution with K*O output
  channels, then weight the K responses. K times the conv FLOPs, but a plain dense conv.

Both compute the same function; which is faster depends on the shape and the device.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .eager_formulas import mix_responses_eager
from .fused_mix import eager_mix_backward, fused_mix, fused_mix_applies, fused_mix_backward
from .kernel_health import HEALTH


def to_2tuple(v) -> Tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def same_padding(kernel_size: Tuple[int, int], dilation: Tuple[int, int]) -> Tuple[int, int]:
    """``(k - 1) // 2 * dilation`` per dimension: 'same' output size at stride 1 for odd k."""
    return tuple((k - 1) // 2 * d for k, d in zip(kernel_size, dilation))  # type: ignore[return-value]


def _group_major(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """K x O x Cg x kh x kw -> (K*O) x Cg x kh x kw ordered so that a grouped conv sees, for each
    group, the K*O/g output channels that belong to it (group, k, o-within-group)."""
    k, o = weight.shape[:2]
    if groups == 1:
        return weight.reshape(k * o, *weight.shape[2:])
    w = weight.reshape(k, groups, o // groups, *weight.shape[2:]).transpose(0, 1)
    return w.reshape(k * o, *weight.shape[2:])


def conv_responses(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation,
                   groups: int) -> torch.Tensor:
    """R_k = W_k * x for every candidate kernel, as one convolution. Returns B x K x O x H' x W'."""
    k, o = weight.shape[:2]
    out = F.conv2d(x, _group_major(weight, groups), None, stride, padding, dilation, groups)
    b, _, h, w = out.shape
    if groups == 1:
        return out.view(b, k, o, h, w)
    out = out.view(b, groups, k, o // groups, h, w).transpose(1, 2)
    return out.reshape(b, k, o, h, w)


def aggregate_kernels(attn: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_k attn_bk W_k as one matrix product: B x K, K x O x ... -> B x O x ..."""
    k = weight.shape[0]
    return (attn @ weight.reshape(k, -1)).reshape(attn.shape[0], *weight.shape[1:])


def mix_responses(responses: torch.Tensor, attn: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum_k attn_k (R_k + b_k).

    responses: B x K x O x H x W; attn: B x K (per sample) or B x K x H x W (per position).
    On a GPU this runs the fused Triton kernels of ``fused_mix`` once they pass their check
    (kernel_health.py); elsewhere, or when they fail, the eager formula.
    """
    if fused_mix_applies(responses, attn) and HEALTH.usable("fused_mix", responses):
        try:
            return fused_mix(responses, attn, bias)
        except Exception as error:  # noqa: BLE001 - a failing kernel falls back, it never stops the run
            HEALTH.disable("fused_mix", responses, error)
    return mix_responses_eager(responses, attn, bias)



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
