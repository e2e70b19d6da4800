"""CondConv (Yang et al., NeurIPS 2019): K expert kernels, each weighted by its own sigmoid gate."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .dynamic_conv import DynamicConv2d
from .mixture_conv import IntOrPair, MixtureConv2d


class CondConv2d(DynamicConv2d):
    """y_b = conv(x_b, sum_k r_bk W_k) + sum_k r_bk b_k, r = sigmoid(FC(GAP(x))).

    The routing is one linear layer C -> K (no hidden layer), and its gates are independent
    sigmoids: no softmax, so no temperature (``temperature`` is None, and the trainer's tau
    schedule passes this layer by). The kernels, biases and every computation ``path`` are
    DynamicConv2d's: only the per-sample mixing weights differ.

    Initialisation: each expert kernel (and bias) like an nn.Conv2d (``init_like_conv2d_``, as
    DynamicConv2d); the routing keeps nn.Linear's default weight init with a zero bias, so every
    gate starts near sigmoid(0) = 1/2.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: Optional[IntOrPair] = None,
                 dilation: IntOrPair = 1, groups: int = 1, bias: bool = False,
                 num_kernels: int = 4, path: str = "auto"):
        # MixtureConv2d's init, not DynamicConv2d's: CondConv has no KernelAttention and no tau.
        MixtureConv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                               dilation, groups, num_kernels, temperature=None)
        self._init_kernels(bias, path)
        self.routing = nn.Linear(in_channels, num_kernels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.routing.reset_parameters()
        nn.init.zeros_(self.routing.bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """r: B x K, each in (0, 1); they need not sum to 1."""
        return torch.sigmoid(self.routing(x.mean((2, 3))))
