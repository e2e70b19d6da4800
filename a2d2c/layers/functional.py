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


def aggregate_kernels(attn: torch.Tensor, weight: torch.Tensor, taps: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum_k attn_bk W_k as one matrix product: B x K, K x O x ... -> B x O x ...

    ``taps`` (B x kh x kw, ODConv's spatial attention) then scales each tap of sample b's kernel:
    W_b = taps_b * sum_k attn_bk W_k. Mixing first keeps the product one contiguous matrix product;
    the scaling is element-wise.
    """
    k = weight.shape[0]
    kernels = (attn @ weight.reshape(k, -1)).reshape(attn.shape[0], *weight.shape[1:])
    return kernels if taps is None else kernels * taps[:, None, None]


def aggregate_kernels_backward(grad_kernels: torch.Tensor, attn: torch.Tensor, weight: torch.Tensor,
                               taps: Optional[torch.Tensor] = None, needs=(True, True, True)):
    """(dL/dattn, dL/dweight, dL/dtaps) of ``aggregate_kernels`` from G = dL/dW_b, for ``needs`` of the three.

    With taps: dL/dtaps_b = sum_{o,c} G_b * M_b, M_b = sum_k attn_bk W_k recomputed, and the mixing
    sees G_b * taps_b. Then dL/dattn_bk = <G_b, W_k> and dL/dW_k = sum_b attn_bk G_b.
    """
    b, k = attn.shape
    grad_kernels = grad_kernels.reshape(b, *weight.shape[1:])
    grad_attn = grad_weight = grad_taps = None
    if taps is not None:
        if needs[2]:
            grad_taps = (grad_kernels * aggregate_kernels(attn, weight)).sum((1, 2))
        grad_kernels = grad_kernels * taps[:, None, None]
    grad_kernels = grad_kernels.reshape(b, -1)
    if needs[0]:
        grad_attn = grad_kernels @ weight.reshape(k, -1).T
    if needs[1]:
        grad_weight = (attn.T @ grad_kernels).reshape(weight.shape)
    return grad_attn, grad_weight, grad_taps


def tap_wise(attn: torch.Tensor, taps: Optional[torch.Tensor]) -> torch.Tensor:
    """attn_bk * taps_b(r, s) as one B x K (x kh x kw) tensor: the form the Triton kernels take."""
    return attn if taps is None else attn[:, :, None, None] * taps[:, None]


def tap_scaled_responses(x: torch.Tensor, taps: torch.Tensor, weight: torch.Tensor, stride, padding,
                         dilation, groups: int) -> torch.Tensor:
    """R_bk = (s_b * W_k) conv x_b for every k, s_b: per-sample tap weights (B x kh x kw), returned as
    B x K x O x H' x W'. The tap weights multiply im2col's columns (each column entry belongs to one
    tap), so all K responses of all samples are one matrix product per group with the shared kernels,
    over the columns of the whole batch side by side."""
    b, c, h, w = x.shape
    k, o, cg, kh, kw = weight.shape
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # B x (C*kh*kw) x L
    positions = cols.shape[-1]
    cols = cols.view(b, c, kh * kw, positions) * taps.reshape(b, 1, kh * kw, 1)
    cols = cols.view(b, groups, cg * kh * kw, positions).permute(1, 2, 0, 3).reshape(groups, cg * kh * kw, -1)
    kernels = weight.reshape(k, groups, o // groups, cg * kh * kw).transpose(0, 1).reshape(groups, -1, cg * kh * kw)
    out = (kernels @ cols).view(groups, k, o // groups, b, positions).permute(3, 1, 0, 2, 4)  # B x K x g x O/g x L
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    return out.reshape(b, k, o, ho, positions // ho)
