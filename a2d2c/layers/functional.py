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

from typing import Tuple

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


def aggregate_kernels(attn: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_k attn_bk W_k as one matrix product: B x K, K x O x ... -> B x O x ..."""
    k = weight.shape[0]
    return (attn @ weight.reshape(k, -1)).reshape(attn.shape[0], *weight.shape[1:])
