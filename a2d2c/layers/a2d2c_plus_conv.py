"""A2D2C+: the streamlined A2D2C. Local attention over K cheap low-rank experts around one
static kernel:

    y = W_0 * x + b + U( sum_k alpha_k . (V_k * x) )

V_k: C -> r (kh x kw), U: r -> O (1x1, shared by the experts), r = max(O // rank_divisor,
min_rank) rounded up to a multiple of groups. The evidence for alpha comes from the V_k
responses. Since sum_k alpha_k = 1, this is A2D2C over the candidate kernels W_0 + U V_k
(``expert_kernels()``), at about (1 + K r / O) times the cost of the static conv instead of K.
Depthwise layers use A2D2C instead (``create_conv2d`` does that): there r would not be smaller
than O.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .a2d2c_conv import LocalAttentionMixin
from .functional import conv_responses, mix_responses
from .mixture_conv import IntOrPair, MixtureConv2d, init_like_conv2d_


def expert_rank(out_channels: int, groups: int, rank_divisor: int, min_rank: int) -> int:
    rank = max(out_channels // rank_divisor, min_rank)
    return math.ceil(rank / groups) * groups


class A2D2CPlusConv2d(LocalAttentionMixin, MixtureConv2d):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: Optional[IntOrPair] = None,
                 dilation: IntOrPair = 1, groups: int = 1, bias: bool = False,
                 num_kernels: int = 4, reduction: int = 4, temperature: float = 1.0,
                 attn_kernel_size: int = 3, global_context: bool = True,
                 rank_divisor: int = 16, min_rank: int = 4):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, num_kernels, temperature)
        kh, kw = self.kernel_size
        self.rank = expert_rank(out_channels, groups, rank_divisor, min_rank)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.down_weight = nn.Parameter(torch.empty(num_kernels, self.rank,
                                                    in_channels // groups, kh, kw))
        self.up_weight = nn.Parameter(torch.empty(out_channels, self.rank // groups, 1, 1))
        self._build_attention(in_channels, num_kernels, reduction, attn_kernel_size,
                              global_context)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_like_conv2d_(self.weight, self.bias)
        init_like_conv2d_(self.down_weight)
        init_like_conv2d_(self.up_weight)

    def expert_responses(self, x: torch.Tensor) -> torch.Tensor:
        """S_k = V_k * x: B x K x r x H' x W'."""
        return conv_responses(x, self.down_weight, *self.conv_args())

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """alpha: B x K x H' x W'."""
        return self.attention_from_responses(x, self.expert_responses(x))

    def expert_kernels(self) -> torch.Tensor:
        """The K equivalent full kernels W_0 + U V_k: K x O x (C/g) x kh x kw."""
        g, k = self.groups, self.num_kernels
        up = self.up_weight.reshape(g, self.out_channels // g, self.rank // g)
        down = self.down_weight.reshape(k, g, self.rank // g, -1)
        low_rank = torch.einsum("gor,kgrx->kgox", up, down)
        return self.weight.unsqueeze(0) + low_rank.reshape(k, *self.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        experts = self.expert_responses(x)
        mixed = mix_responses(experts, self.attention_from_responses(x, experts))
        out = F.conv2d(x, self.weight, self.bias, *self.conv_args())
        return out + F.conv2d(mixed, self.up_weight, None, 1, 0, 1, self.groups)
