"""A2D2C: adaptive attention-driven dynamic convolution with per-position kernel attention.

Our formulation (the paper's full text is not available; see the README):
  1. R_k = W_k * x for every candidate kernel (one conv with K*O output channels);
  2. evidence: channel-mean and channel-max of each R_k (2K maps);
  3. logits: a ka x ka conv over the evidence, plus DyConv's global logits when
     ``global_context`` (broadcast over positions);
  4. alpha = softmax_k(logits / tau), B x K x H' x W';
  5. y(p) = sum_k alpha_k(p) (R_k(p) + b_k), i.e. each output position is convolved with its own
     kernel sum_k alpha_k(p) W_k: a local dynamic convolution.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .functional import conv_responses
from .kernel_attention import KernelAttention, LocalKernelAttention
from .kernels.dispatch import mix_responses, recomputed_mix
from .mixture_conv import IntOrPair, MixtureConv2d, init_like_conv2d_


class LocalAttentionMixin:
    """alpha = softmax_k((local(responses) + global(x)) / tau), shared by A2D2C and A2D2C+."""

    def _build_attention(self, in_channels: int, num_kernels: int, reduction: int,
                         attn_kernel_size: int, global_context: bool,
                         separable: bool = False) -> None:
        self.local_attention = LocalKernelAttention(num_kernels, attn_kernel_size, separable)
        self.kernel_attention = (KernelAttention(in_channels, num_kernels, reduction)
                                 if global_context else None)

    def attention_from_responses(self, x: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        logits = self.local_attention(responses)
        if self.kernel_attention is not None:
            logits = logits + self.kernel_attention(x)[:, :, None, None].to(logits.dtype)
        return torch.softmax(logits / self.temperature, dim=1)


class A2D2CConv2d(LocalAttentionMixin, MixtureConv2d):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: Optional[IntOrPair] = None,
                 dilation: IntOrPair = 1, groups: int = 1, bias: bool = False,
                 num_kernels: int = 4, reduction: int = 4, temperature: float = 1.0,
                 attn_kernel_size: int = 3, global_context: bool = True, recompute_responses: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, num_kernels, temperature)
        kh, kw = self.kernel_size
        # Backward recomputes the K responses instead of keeping them (kernels/dispatch.py):
        # about K times less activation memory for one more K-kernel conv per training step. Off by
        # default, as timm's gradient checkpointing: +29% step time for memory few runs lack.
        self.recompute_responses = recompute_responses
        self.weight = nn.Parameter(torch.empty(num_kernels, out_channels,
                                               in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(num_kernels, out_channels)) if bias else None
        self._build_attention(in_channels, num_kernels, reduction, attn_kernel_size,
                              global_context)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_like_conv2d_(self.weight, self.bias)

    def responses(self, x: torch.Tensor) -> torch.Tensor:
        """R: B x K x O x H' x W'."""
        return conv_responses(x, self.weight, *self.conv_args())

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """alpha: B x K x H' x W'."""
        return self.attention_from_responses(x, self.responses(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        responses = self.responses(x)
        attn = self._observe(self.attention_from_responses(x, responses))
        if self.recompute_responses:
            return recomputed_mix(responses, attn, self.bias, x, self.weight, *self.conv_args())
        return mix_responses(responses, attn, self.bias)
