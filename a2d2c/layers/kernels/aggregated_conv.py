"""Per-sample aggregated kernels, without keeping the kernels for backward.

Three ways to convolve each sample with its own kernel W_b = sum_k pi_bk W_k:
  * ``grouped``: all samples as one grouped conv with groups = B * g;
  * ``unfold``: im2col + one batched matrix product, out_b = W_b @ cols(x_b): static FLOPs on
    the GEMM units, without the grouped conv's poor kernels for large per-sample weights;
  * ``triton``: per-sample implicit-GEMM Triton kernels that build W_b tiles on the fly
    (per_sample_conv.py; dense convs on CUDA).

The usual implementation (timm's CondConv2d, DyConv re-implementations) builds
W_b = sum_k pi_bk W_k for every sample and lets autograd keep those B x O x C/g x kh x kw
kernels until backward: for ResNet-18's layer4 at batch 128 that is 300M values per layer, the
memory that grows with batch size in peers' issue trackers. Here backward recomputes the
kernels from pi and W (one small matrix product) and gets both gradients of the grouped conv
from one ``convolution_backward`` call:

    dL/dW_b  = conv-weight-grad(x_b, dL/dy_b)          (B x O x C/g x kh x kw, transient)
    dL/dpi_bk = <dL/dW_b, W_k>,   dL/dW_k = sum_b pi_bk dL/dW_b,   dL/dx = conv-input-grad
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..functional import aggregate_kernels, aggregate_kernels_backward, tap_wise
from .health import HEALTH
from .per_sample_conv import per_sample_conv, per_sample_conv_backward


def _grouped_conv(x, kernels, stride, padding, dilation, groups):
    b, c, h, w = x.shape
    out = F.conv2d(x.reshape(1, b * c, h, w), kernels.reshape(-1, *kernels.shape[2:]), None,
                   stride, padding, dilation, groups * b)
    return out.view(b, -1, *out.shape[-2:])


def _unfold_conv(x, kernels, stride, padding, dilation, groups):
    b, c, h, w = x.shape
    o, kh, kw = kernels.shape[1], kernels.shape[-2], kernels.shape[-1]
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    out = kernels.reshape(b, groups, o // groups, -1) @ cols.view(b, groups, -1, cols.shape[-1])
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    return out.view(b, o, ho, -1)


def _unfold_backward(grad_out, x, kernels, stride, padding, dilation, groups, needs):
    b, c, h, w = x.shape
    o, kh, kw = kernels.shape[1], kernels.shape[-2], kernels.shape[-1]
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    cols = cols.view(b, groups, -1, cols.shape[-1])
    kernels = kernels.reshape(b, groups, o // groups, -1)
    grad_out = grad_out.reshape(b, groups, o // groups, -1)
    grad_x = grad_kernels = None
    if needs[0]:
        grad_cols = (kernels.transpose(-1, -2) @ grad_out).reshape(b, -1, cols.shape[-1])
        grad_x = F.fold(grad_cols, (h, w), (kh, kw), dilation=dilation, padding=padding,
                        stride=stride)
    if needs[1]:
        grad_kernels = grad_out @ cols.transpose(-1, -2)
    return grad_x, grad_kernels


def _grouped_backward(grad_out, x, kernels, stride, padding, dilation, groups, needs):
    b, c, h, w = x.shape
    grad_x, grad_kernels, _ = torch.ops.aten.convolution_backward(
        grad_out.reshape(1, -1, *grad_out.shape[-2:]), x.reshape(1, b * c, h, w),
        kernels.reshape(-1, *kernels.shape[2:]), None, stride, padding, dilation, False,
        (0, 0), groups * b, (needs[0], needs[1], False))
    return (None if grad_x is None else grad_x.reshape(x.shape)), grad_kernels


_METHODS = {"grouped": (_grouped_conv, _grouped_backward),
            "unfold": (_unfold_conv, _unfold_backward)}


class _PerSampleConv(torch.autograd.Function):
    """Per-sample kernels whose backward recomputes them (and, for unfold, the columns)."""

    @staticmethod
    def forward(ctx, x, attn, weight, taps, stride, padding, dilation, groups, method):
        ctx.conv = (stride, padding, dilation, groups)
        ctx.method = method
        ctx.save_for_backward(x, attn, weight, taps)
        if method == "triton":  # groups = 1; the kernels are built tile by tile inside
            try:
                return per_sample_conv(x, tap_wise(attn, taps), weight, stride, padding, dilation)
            except Exception as error:  # noqa: BLE001 - a failing kernel falls back, it never stops the run
                HEALTH.disable("per_sample_conv", x, error)
                ctx.method = method = "grouped"
        conv = _METHODS[method][0]
        return conv(x, aggregate_kernels(attn, weight, taps), stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, attn, weight, taps = ctx.saved_tensors
        need_x, need_attn, need_weight, need_taps = ctx.needs_input_grad[:4]
        needs = (need_x, need_attn or need_weight or need_taps)
        if ctx.method == "triton":
            stride, padding, dilation, _ = ctx.conv
            try:
                grad_x, grad_kernels = per_sample_conv_backward(grad_out, x, tap_wise(attn, taps), weight, stride,
                                                                padding, dilation, needs)
            except Exception as error:  # noqa: BLE001 - a failing kernel falls back, it never stops the run
                HEALTH.disable("per_sample_conv", x, error)
                ctx.method = "grouped"
        if ctx.method != "triton":
            backward = _METHODS[ctx.method][1]
            grad_x, grad_kernels = backward(grad_out, x, aggregate_kernels(attn, weight, taps), *ctx.conv, needs)
        grad_attn = grad_weight = grad_taps = None
        if grad_kernels is not None:
            # with taps, M = sum_k attn_bk W_k is recomputed there rather than kept: one matrix product, not B x |W| memory
            grad_attn, grad_weight, grad_taps = aggregate_kernels_backward(
                grad_kernels, attn, weight, taps, (need_attn, need_weight, need_taps))
        return grad_x, grad_attn, grad_weight, grad_taps, None, None, None, None, None


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _per_sample_inference(x, attn, weight, stride, padding, dilation) -> Optional[torch.Tensor]:
    """The Triton forward without autograd, or None when it failed (kernel_health.py warned)."""
    dtype = _autocast_dtype(x.device.type) or x.dtype
    try:
        return per_sample_conv(x.to(dtype), attn.to(dtype), weight.to(dtype), stride, padding, dilation)
    except Exception as error:  # noqa: BLE001 - a failing kernel falls back, it never stops the run
        HEALTH.disable("per_sample_conv", x, error)
        return None


def aggregated_conv(x: torch.Tensor, attn: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor], stride, padding, dilation, groups: int,
                    method: str = "grouped", save_kernels: bool = False,
                    taps: Optional[torch.Tensor] = None) -> torch.Tensor:
    """conv(x_b, taps_b * sum_k attn_bk W_k) + sum_k attn_bk b_k for every sample b.

    ``taps``: None, or B x kh x kw weights of each kernel tap (ODConv's spatial attention; ``aggregate_kernels``).
    ``method``: "grouped" (one grouped conv), "unfold" (im2col + batched matmul) or "triton"
    (per_sample_conv.py; the caller checks ``per_sample_conv_applies``).
    ``save_kernels=True`` is the plain autograd version that keeps the per-sample kernels
    (the peers' implementation, for benchmarks). At batch 1 the kernel is built once and used
    in an ordinary conv.
    """
    b = x.shape[0]
    if method == "triton" and not HEALTH.usable("per_sample_conv", x):
        method = "grouped"  # the check failed: the warning is out, the grouped conv computes the same
    out = None
    if method == "triton" and b > 1 and not torch.is_grad_enabled():  # inference: no kernels in memory at all
        out = _per_sample_inference(x, tap_wise(attn, taps), weight, stride, padding, dilation)
        method = "triton" if out is not None else "grouped"
    if out is None and (b == 1 or save_kernels or not torch.is_grad_enabled()):
        kernels = aggregate_kernels(attn, weight, taps)
        out = (F.conv2d(x, kernels[0], None, stride, padding, dilation, groups) if b == 1
               else _METHODS[method][0](x, kernels, stride, padding, dilation, groups))
    elif out is None:
        # autograd.Function does not see autocast; cast the inputs as autocast would.
        dtype = _autocast_dtype(x.device.type)
        if dtype is not None:
            x, attn, weight = x.to(dtype), attn.to(dtype), weight.to(dtype)
            taps = None if taps is None else taps.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            out = _PerSampleConv.apply(x, attn, weight, taps, stride, padding, dilation, groups, method)
    if bias is not None:
        out = out + (attn @ bias.to(attn.dtype)).to(out.dtype)[:, :, None, None]
    return out
