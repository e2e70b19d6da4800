"""ODConv (Li, Zhou and Yao, ICLR 2022): attention along all four axes of the kernel space."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dynamic_conv import DynamicConv2d
from .functional import conv_responses, tap_scaled_responses
from .kernels.aggregated_conv import aggregated_conv
from .kernels.dispatch import mix_responses
from .mixture_conv import IntOrPair, MixtureConv2d
from .omni_attention import OmniAttention, OmniHeads


class ODConv2d(DynamicConv2d):
    """y_b = alpha_f ⊙ (conv(alpha_c ⊙ x_b, sum_k alpha_wk (alpha_s ⊙ W_k)) + sum_k alpha_wk b_k).

    The four attentions come from ``OmniAttention`` (channel, filter, spatial and kernel; each with
    tau). ``num_kernels`` 1 and 4 are the paper's ODConv 1x and 4x; ``reduction`` 16 and
    ``min_hidden`` 16 its attention width max(C * 1/16, 16). ODConv has no bias; with ``bias=True``
    the K biases are mixed by alpha_w and scaled by alpha_f with the rest of the output.

    The channel attention scales the input and the filter attention the output (element-wise, on
    maps smaller than the per-sample kernels); kernel and spatial attentions make the per-sample
    kernel, alpha_s ⊙ sum_k alpha_wk W_k (``aggregate_kernels`` with ``taps``). Every
    ``path`` of DynamicConv2d computes that: ``aggregate``, ``unfold``, ``triton`` (tap-wise
    coefficients alpha_wk * alpha_s(r, s)) and ``reference``, with the same recomputing backward;
    ``responses`` as K responses whose im2col columns carry the spatial attention
    (``tap_scaled_responses``; a plain dense conv where there is no spatial head). A 1x1 conv with
    K = 1 is one ordinary conv between the two scalings.

    ``attention(x)`` returns the kernel attention B x K (ones for K = 1); ``heads(x)`` all four.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: Optional[IntOrPair] = None,
                 dilation: IntOrPair = 1, groups: int = 1, bias: bool = False,
                 num_kernels: int = 4, reduction: int = 16, min_hidden: int = 16,
                 temperature: float = 1.0, path: str = "auto"):
        # MixtureConv2d's init, not DynamicConv2d's: the attention is ODConv's, not KernelAttention.
        MixtureConv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                               dilation, groups, num_kernels, temperature)
        self._init_kernels(bias, path)
        self.omni_attention = OmniAttention(in_channels, out_channels, self.kernel_size, groups,
                                            num_kernels, reduction, min_hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As ODConv's code: each candidate kernel kaiming-normal (fan_out), the bias (ours) zero.
        for kernel in self.weight:
            nn.init.kaiming_normal_(kernel, mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def heads(self, x: torch.Tensor) -> OmniHeads:
        return self.omni_attention(x, self.temperature)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """alpha_w: B x K (ones when K = 1)."""
        kernel = self.heads(x).kernel
        return x.new_ones(x.shape[0], 1) if kernel is None else kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = self.heads(x)
        if heads.kernel is not None:
            self._observe(heads.kernel)
        y = self._compute(self.select_path(x), x * heads.channel[:, :, None, None], heads)
        return y if heads.filter is None else y * heads.filter[:, :, None, None]

    def _compute(self, path: str, x: torch.Tensor, heads: OmniHeads) -> torch.Tensor:
        """The conv with mixed kernels, between the channel and the filter scaling."""
        spatial, kernel = heads.spatial, heads.kernel
        if spatial is None and kernel is None:  # 1x1, K = 1: one kernel, nothing to mix
            return F.conv2d(x, self.weight[0], None if self.bias is None else self.bias[0], *self.conv_args())
        if kernel is None:
            kernel = x.new_ones(x.shape[0], 1)
        if path == "responses":
            responses = conv_responses(x, self.weight, *self.conv_args()) if spatial is None else \
                tap_scaled_responses(x, spatial, self.weight, *self.conv_args())
            return mix_responses(responses, kernel, self.bias)
        return aggregated_conv(x, kernel, self.weight, self.bias, *self.conv_args(),
                               method=path if path in ("unfold", "triton") else "grouped",
                               save_kernels=path == "reference", taps=spatial)

    def _time_path(self, path: str, x: torch.Tensor) -> None:
        """One forward (and backward, when training) of ``path``, for the tuner. Constant attentions
        of the right shapes: running the attention would move its BatchNorm's running statistics."""
        grad = torch.is_grad_enabled()
        x = x.detach().requires_grad_(grad)
        b, att = x.shape[0], self.omni_attention
        spatial = None if att.spatial_fc is None else x.new_full((b, *self.kernel_size), 0.5, requires_grad=grad)
        kernel = None if att.kernel_fc is None else x.new_full((b, self.num_kernels), 1 / self.num_kernels,
                                                               requires_grad=grad)
        out = self._compute(path, x, OmniHeads(x.new_ones(b, x.shape[1]), None, spatial, kernel))
        if grad:
            leaves = (x,) + tuple(t for t in (spatial, kernel) if t is not None)
            trained = tuple(p for p in (self.weight, self.bias) if p is not None and p.requires_grad)
            torch.autograd.grad(out, leaves + trained, torch.ones_like(out))
