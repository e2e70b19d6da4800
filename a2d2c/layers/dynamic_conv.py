"""DyConv (Chen et al., CVPR 2020): attention over K convolution kernels, one mix per sample."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .aggregated_conv import aggregated_conv
from .functional import conv_responses, mix_responses
from .kernel_attention import KernelAttention
from .mixture_conv import IntOrPair, MixtureConv2d, init_like_conv2d_

PATHS = ("auto", "aggregate", "responses", "reference")


class DynamicConv2d(MixtureConv2d):
    """y_b = conv(x_b, sum_k pi_bk W_k) + sum_k pi_bk b_k, pi = softmax(logits(x) / tau).

    ``path`` picks how that is computed (same function either way):
      * ``aggregate``: per-sample kernels and one grouped conv (DyConv's canonical form), with
        a backward that recomputes the kernels instead of keeping them;
      * ``responses``: K responses in one dense conv, then mixed;
      * ``auto``: ``aggregate`` for batch 1 (the kernel is built once), grouped convs and large
        output maps (>= 28x28), ``responses`` elsewhere, where a dense conv over K*O channels
        beats a grouped conv over B groups of large kernels (REFERENCES.md's measurements);
      * ``reference``: the usual implementation (per-sample kernels kept by autograd), for
        benchmarks.
    ONNX export always takes ``responses``: its graph has no group count tied to the batch
    size, so the exported model takes any batch.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: Optional[IntOrPair] = None,
                 dilation: IntOrPair = 1, groups: int = 1, bias: bool = False,
                 num_kernels: int = 4, reduction: int = 4, temperature: float = 1.0,
                 path: str = "auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, num_kernels, temperature)
        if path not in PATHS:
            raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
        self.path = path
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(num_kernels, out_channels,
                                               in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(num_kernels, out_channels)) if bias else None
        self.kernel_attention = KernelAttention(in_channels, num_kernels, reduction)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_like_conv2d_(self.weight, self.bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """pi: B x K."""
        return torch.softmax(self.kernel_attention(x) / self.temperature, dim=1)

    def use_aggregate(self, x: torch.Tensor) -> bool:
        if torch.onnx.is_in_onnx_export():
            return False
        if self.path != "auto":
            return self.path in ("aggregate", "reference")
        h, w = self.output_size(x.shape[-2], x.shape[-1])
        return x.shape[0] == 1 or self.groups > 1 or h * w >= 28 * 28

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attention(x)
        if self.use_aggregate(x):
            return aggregated_conv(x, attn, self.weight, self.bias, *self.conv_args(),
                                   save_kernels=self.path == "reference")
        return mix_responses(conv_responses(x, self.weight, *self.conv_args()), attn, self.bias)
