"""DyConv (Chen et al., CVPR 2020): attention over K convolution kernels, one mix per sample."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .kernels.aggregated_conv import aggregated_conv
from .kernels.per_sample_conv import per_sample_conv_applies
from .functional import conv_responses
from .kernels.dispatch import mix_responses
from .kernel_attention import KernelAttention
from .mixture_conv import IntOrPair, MixtureConv2d, init_like_conv2d_
from .kernels.path_tuning import TUNABLE_PATHS, TUNER, default_path

PATHS = ("auto", "tune", "aggregate", "unfold", "triton", "responses", "reference")
# DyConv's own formulation (attention, kernel aggregation, one conv per sample): the form the
# papers count MAdds in, whichever path a model is built to run (models/complexity.py).
CANONICAL_PATH = "aggregate"


class DynamicConv2d(MixtureConv2d):
    """y_b = conv(x_b, sum_k pi_bk W_k) + sum_k pi_bk b_k, pi = softmax(logits(x) / tau).

    ``path`` picks how that is computed (the same function every way):
      * ``aggregate``: per-sample kernels and one grouped conv (DyConv's canonical form), with
        a backward that recomputes the kernels instead of keeping them;
      * ``unfold``: per-sample kernels applied by im2col + batched matmul, same backward trick;
      * ``triton``: per-sample implicit-GEMM Triton kernels that never materialise the kernels
        (dense convs on CUDA, eager; elsewhere and inside torch.compile this is ``aggregate``);
      * ``responses``: K responses in one dense conv, then mixed;
      * ``auto``: ``path_tuning.default_path``, a rule from measured GPU timings;
      * ``tune``: time aggregate / unfold / responses (and triton where it applies) the first
        time a shape is met and keep the fastest (falls back to ``auto`` inside torch.compile);
      * ``reference``: the usual implementation (per-sample kernels kept by autograd, grouped
        conv), for benchmarks.
    Batch 1 always aggregates the kernel once. ONNX export always takes ``responses``: its graph
    has no group count tied to the batch size, so the exported model takes any batch.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: Optional[IntOrPair] = None,
                 dilation: IntOrPair = 1, groups: int = 1, bias: bool = False,
                 num_kernels: int = 4, reduction: int = 4, temperature: float = 1.0,
                 path: str = "auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, num_kernels, temperature)
        self._init_kernels(bias, path)
        self.kernel_attention = KernelAttention(in_channels, num_kernels, reduction)
        self.reset_parameters()

    def _init_kernels(self, bias: bool, path: str) -> None:
        """``path`` and the K kernels (and biases): K x O x C/g x kh x kw (K x O)."""
        if path not in PATHS:
            raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
        self.path = path
        kh, kw = self.kernel_size
        k, o = self.num_kernels, self.out_channels
        self.weight = nn.Parameter(torch.empty(k, o, self.in_channels // self.groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(k, o)) if bias else None

    def reset_parameters(self) -> None:
        init_like_conv2d_(self.weight, self.bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """pi: B x K."""
        return torch.softmax(self.kernel_attention(x) / self.temperature, dim=1)

    def select_path(self, x: torch.Tensor) -> str:
        if torch.onnx.is_in_onnx_export():
            return "responses"
        if self.path == "triton" and (torch.compiler.is_compiling() or not per_sample_conv_applies(x, self.groups)):
            return "aggregate"  # Inductor does not trace into the hand-written kernels
        if self.path not in ("auto", "tune"):
            return self.path
        h, w = self.output_size(x.shape[-2], x.shape[-1])
        rule = default_path(x.shape[0], h * w, self.groups)
        if self.path == "auto" or x.shape[0] == 1 or torch.compiler.is_compiling():
            return rule
        candidates = TUNABLE_PATHS + (("triton",) if per_sample_conv_applies(x, self.groups) else ())
        return TUNER.choose(self._tuning_key(x), lambda p: self._time_path(p, x), x.device, candidates)

    def _tuning_key(self, x: torch.Tensor):
        autocast = torch.get_autocast_dtype(x.device.type) \
            if torch.is_autocast_enabled(x.device.type) else None
        return (tuple(x.shape), x.dtype, str(x.device), autocast, torch.is_grad_enabled(),
                x.is_contiguous(memory_format=torch.channels_last), self.out_channels,
                self.kernel_size, self.stride, self.padding, self.dilation, self.groups,
                self.num_kernels, self.weight.requires_grad)  # a frozen kernel's backward is less work

    def _time_path(self, path: str, x: torch.Tensor) -> None:
        """One forward (and backward, when training) of ``path``, for the tuner."""
        x = x.detach().requires_grad_(torch.is_grad_enabled())
        attn = self.attention(x.detach()).detach().requires_grad_(torch.is_grad_enabled())
        out = self._compute(path, x, attn)
        if torch.is_grad_enabled():
            # Only the kernels that train: asking autograd for the gradient of a frozen one
            # (frozen stages, requires_grad_(False)) is an error, which would fail every path.
            trained = tuple(p for p in (self.weight, self.bias) if p is not None and p.requires_grad)
            torch.autograd.grad(out, (x, attn) + trained, torch.ones_like(out))

    def _compute(self, path: str, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        if path == "responses":
            return mix_responses(conv_responses(x, self.weight, *self.conv_args()), attn,
                                 self.bias)
        return aggregated_conv(x, attn, self.weight, self.bias, *self.conv_args(),
                               method=path if path in ("unfold", "triton") else "grouped",
                               save_kernels=path == "reference")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compute(self.select_path(x), x, self._observe(self.attention(x)))
