"""Attention over K candidate kernels.

``KernelAttention`` is DyConv's global branch: squeeze-and-excitation style logits from the
globally pooled input, one set of K logits per sample.

``LocalKernelAttention`` is A2D2C's local branch: the evidence for kernel k at position p is the
channel-mean and channel-max of that kernel's response R_k(p), and a small ka x ka conv turns
the 2K evidence maps into K logits per position.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kernels.dispatch import response_evidence


class KernelAttention(nn.Module):
    """logits = FC2(ReLU(FC1(GAP(x)))), FC1: C -> max(C // reduction, min_hidden), FC2: -> K.

    No BatchNorm inside: it would break at batch size 1 and couple samples in a batch.
    """

    def __init__(self, in_channels: int, num_kernels: int, reduction: int = 4, min_hidden: int = 4):
        super().__init__()
        hidden = max(in_channels // reduction, min_hidden)
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, num_kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x C x H x W -> logits B x K."""
        return self.fc2(F.relu(self.fc1(x.mean((2, 3)))))


class LocalKernelAttention(nn.Module):
    """Per-position logits from the 2K evidence maps (mean, max of each R_k).

    ``separable=False`` (A2D2C): one ka x ka conv, 2K -> K: 2 K^2 ka^2 MAdds per position.
    ``separable=True`` (A2D2C+): a 1x1 conv 2K -> K, then a ka x ka conv on each of the K logit
    maps (``conv``, then ``spatial``): 2 K^2 + K ka^2 MAdds, 68 instead of 288 at K = 4, ka = 3.
    At a 112 x 112 map of a narrow MobileNet the full form alone costs about twice the layer.
    """

    def __init__(self, num_kernels: int, kernel_size: int = 3, separable: bool = False):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"attn_kernel_size must be a positive odd number, got {kernel_size}")
        k, pad = num_kernels, kernel_size // 2
        if separable:
            self.conv = nn.Conv2d(2 * k, k, 1)
            self.spatial = nn.Conv2d(k, k, kernel_size, padding=pad, groups=k, bias=False)
        else:
            self.conv = nn.Conv2d(2 * k, k, kernel_size, padding=pad)
            self.spatial = None

    def forward(self, responses: torch.Tensor) -> torch.Tensor:
        """responses: B x K x O x H x W -> logits B x K x H x W."""
        logits = self.conv(response_evidence(responses))
        return logits if self.spatial is None else self.spatial(logits)
