"""A2D2C+: the streamlined A2D2C. Local attention over K cheap low-rank experts around one
static kernel:

    y = W_0 * x + b + U( sum_k alpha_k . (V_k * x) )

V_k: C -> r (kh x kw), U: r -> O (1x1, shared by the experts). The evidence for alpha (the
channel-mean and channel-max of each expert response V_k * x) goes through a separable head
(1x1 then ka x ka per logit map), and the global logits through DyConv's branch with reduction
16. Since sum_k alpha_k = 1, the mixing is A2D2C's over the candidate kernels W_0 + U V_k
(``expert_kernels()``); the attention is A2D2C+'s own, computed from the V_k responses.

Cost, per output position, against the static conv's O (C/g) kh kw:
- the rank rule ``r = max(min(O, C kh kw) // rank_divisor, min_rank)``, rounded up to a multiple
  of groups, keeps V at K r / O <= K / rank_divisor and U at r / (C kh kw) <= 1 / rank_divisor of
  it: a 1x1 expansion layer (O = 6C) would otherwise pay O^2 / 16 for U alone;
- depthwise layers (one input channel per group) cannot lower the rank below the channel
  count, so there the experts are 1x1: V_k scales each channel at the kernel's centre tap, the
  candidate kernels are W_0 + (u . v_k) at the centre tap, computed as x_c . (alpha^T (v u)):
  K / (kh kw) of the conv's MAdds instead of K times, and one map kept for backward.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .a2d2c_conv import LocalAttentionMixin
from .functional import conv_responses
from .kernels.dispatch import mix_responses
from .mixture_conv import IntOrPair, MixtureConv2d, init_like_conv2d_


def expert_rank(in_channels: int, out_channels: int, kernel_size: tuple, groups: int,
                rank_divisor: int, min_rank: int) -> int:
    """r = max(min(O, C kh kw) // rank_divisor, min_rank), rounded up to a multiple of groups."""
    if rank_divisor < 1 or min_rank < 1:
        raise ValueError(f"rank_divisor and min_rank must be >= 1, got {rank_divisor} and {min_rank}")
    fan_in = in_channels * kernel_size[0] * kernel_size[1]
    rank = max(min(out_channels, fan_in) // rank_divisor, min_rank)
    return math.ceil(rank / groups) * groups


class A2D2CPlusConv2d(LocalAttentionMixin, MixtureConv2d):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: Optional[IntOrPair] = None,
                 dilation: IntOrPair = 1, groups: int = 1, bias: bool = False,
                 num_kernels: int = 4, reduction: int = 16, temperature: float = 1.0,
                 attn_kernel_size: int = 3, global_context: bool = True,
                 rank_divisor: int = 16, min_rank: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, num_kernels, temperature)
        kh, kw = self.kernel_size
        # One input channel per group: the experts are 1x1, at the kernel's centre tap.
        self.depthwise = in_channels == groups > 1
        vh, vw = (1, 1) if self.depthwise else (kh, kw)
        self.rank = expert_rank(in_channels, out_channels, self.kernel_size, groups,
                                rank_divisor, min_rank)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.down_weight = nn.Parameter(torch.empty(num_kernels, self.rank,
                                                    in_channels // groups, vh, vw))
        self.up_weight = nn.Parameter(torch.empty(out_channels, self.rank // groups, 1, 1))
        self._build_attention(in_channels, num_kernels, reduction, attn_kernel_size,
                              global_context, separable=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_like_conv2d_(self.weight, self.bias)
        init_like_conv2d_(self.down_weight)
        init_like_conv2d_(self.up_weight)

    def _centre_tap_input(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x H' x W': at every output position, the input the kernel's centre tap
        ((kh-1)//2, (kw-1)//2) reads (x cropped or zero-padded, then strided: a view where it can)."""
        pads = []
        for k, d, p in zip(reversed(self.kernel_size), reversed(self.dilation),
                           reversed(self.padding)):
            tap = (k - 1) // 2
            pads += [p - tap * d, p - (k - 1 - tap) * d]
        x = F.pad(x, pads) if any(pads) else x
        return x[:, :, ::self.stride[0], ::self.stride[1]]

    def expert_responses(self, x: torch.Tensor) -> torch.Tensor:
        """S_k = V_k * x: B x K x r x H' x W'."""
        if self.depthwise:  # v_k scales each channel of the centre-tap input
            return self._centre_tap_scales()[None, :, :, None, None] * self._centre_tap_input(x)[:, None]
        return conv_responses(x, self.down_weight, *self.conv_args())

    def _centre_tap_scales(self) -> torch.Tensor:
        """The depthwise experts v_k as a K x C matrix."""
        return self.down_weight[:, :, 0, 0, 0]

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """alpha: B x K x H' x W'."""
        return self.attention_from_responses(x, self.expert_responses(x))

    def expert_kernels(self) -> torch.Tensor:
        """The K equivalent full kernels W_0 + U V_k: K x O x (C/g) x kh x kw."""
        g, k = self.groups, self.num_kernels
        up = self.up_weight.reshape(g, self.out_channels // g, self.rank // g)
        down = self.down_weight.reshape(k, g, self.rank // g, -1)
        low_rank = torch.einsum("gor,kgrx->kgox", up, down)
        if not self.depthwise:
            return self.weight.unsqueeze(0) + low_rank.reshape(k, *self.weight.shape)
        kh, kw = self.kernel_size
        centre = torch.zeros(k, *self.weight.shape, dtype=low_rank.dtype, device=low_rank.device)
        centre[..., (kh - 1) // 2, (kw - 1) // 2] = low_rank.reshape(k, *self.weight.shape[:2])
        return self.weight.unsqueeze(0) + centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        experts = self.expert_responses(x)
        alpha = self._observe(self.attention_from_responses(x, experts))
        out = F.conv2d(x, self.weight, self.bias, *self.conv_args())
        if self.depthwise:
            # U sum_k alpha_k (v_k . x_c) = x_c . (alpha^T (v u)): the same value, but autograd keeps
            # one C x H' x W' map per sample instead of the K scaled copies of the input and their mix
            scales = self._centre_tap_scales() * self.up_weight.view(1, -1)
            coef = torch.einsum("bkhw,kc->bchw", alpha.to(scales.dtype), scales)
            return out + self._centre_tap_input(x).to(coef.dtype) * coef
        mixed = mix_responses(experts, alpha)
        return out + F.conv2d(mixed, self.up_weight, None, 1, 0, 1, self.groups)
