"""Per-sample aggregated kernels with one grouped conv, without keeping the kernels for backward.

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

from .functional import aggregate_kernels


def _grouped_conv(x, kernels, stride, padding, dilation, groups):
    b, c, h, w = x.shape
    out = F.conv2d(x.reshape(1, b * c, h, w), kernels.reshape(-1, *kernels.shape[2:]), None,
                   stride, padding, dilation, groups * b)
    return out.view(b, -1, *out.shape[-2:])


class _AggregatedConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, attn, weight, stride, padding, dilation, groups):
        ctx.conv = (stride, padding, dilation, groups)
        ctx.save_for_backward(x, attn, weight)
        return _grouped_conv(x, aggregate_kernels(attn, weight), stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, attn, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        b, c, h, w = x.shape
        k = weight.shape[0]
        kernels = aggregate_kernels(attn, weight)
        need_x, need_attn, need_weight = ctx.needs_input_grad[:3]
        grad_x, grad_kernels, _ = torch.ops.aten.convolution_backward(
            grad_out.reshape(1, -1, *grad_out.shape[-2:]), x.reshape(1, b * c, h, w),
            kernels.reshape(-1, *kernels.shape[2:]), None, stride, padding, dilation, False,
            (0, 0), groups * b, (need_x, need_attn or need_weight, False))
        grad_attn = grad_weight = None
        if grad_kernels is not None:
            grad_kernels = grad_kernels.reshape(b, -1)
            if need_attn:
                grad_attn = grad_kernels @ weight.reshape(k, -1).T
            if need_weight:
                grad_weight = (attn.T @ grad_kernels).reshape(weight.shape)
        if grad_x is not None:
            grad_x = grad_x.reshape(x.shape)
        return grad_x, grad_attn, grad_weight, None, None, None, None


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def aggregated_conv(x: torch.Tensor, attn: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor], stride, padding, dilation, groups: int,
                    save_kernels: bool = False) -> torch.Tensor:
    """conv(x_b, sum_k attn_bk W_k) + sum_k attn_bk b_k, all samples in one grouped conv.

    ``save_kernels=True`` is the plain autograd version that keeps the per-sample kernels
    (the peers' implementation, for benchmarks). At batch 1 the kernel is built once and used
    in an ordinary conv.
    """
    b = x.shape[0]
    if b == 1 or save_kernels or not torch.is_grad_enabled():
        kernels = aggregate_kernels(attn, weight)
        out = (F.conv2d(x, kernels[0], None, stride, padding, dilation, groups) if b == 1
               else _grouped_conv(x, kernels, stride, padding, dilation, groups))
    else:
        # autograd.Function does not see autocast; cast the inputs as autocast would.
        dtype = _autocast_dtype(x.device.type)
        if dtype is not None:
            x, attn, weight = x.to(dtype), attn.to(dtype), weight.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            out = _AggregatedConv.apply(x, attn, weight, stride, padding, dilation, groups)
    if bias is not None:
        out = out + (attn @ bias.to(attn.dtype)).to(out.dtype)[:, :, None, None]
    return out
