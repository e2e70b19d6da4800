"""ODConv's attention (Li, Zhou and Yao, ICLR 2022): one squeeze branch, four heads.

    h = ReLU(BN(FC(GAP(x))))                FC: C -> max(C // reduction, min_hidden)
    channel  alpha_c = sigmoid(FC_c(h) / tau)    B x C          input channels
    filter   alpha_f = sigmoid(FC_f(h) / tau)    B x O          output channels (None for depthwise)
    spatial  alpha_s = sigmoid(FC_s(h) / tau)    B x kh x kw    kernel taps     (None for 1x1)
    kernel   alpha_w = softmax(FC_w(h) / tau)    B x K          candidate kernels (None for K = 1)

A skipped head is None: it would multiply by a constant the other heads already cover (a
depthwise conv's filter and channel axes are the same axis) or by 1.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


class OmniHeads(NamedTuple):
    channel: torch.Tensor             # B x C
    filter: Optional[torch.Tensor]    # B x O
    spatial: Optional[torch.Tensor]   # B x kh x kw
    kernel: Optional[torch.Tensor]    # B x K


class OmniAttention(nn.Module):
    """The four attentions of ODConv from the globally pooled input.

    **A batch of one in training mode.** The branch has a BatchNorm over the B pooled vectors; with
    B = 1 there is no batch statistic (the peers' code stops with "Expected more than 1 value per
    channel", ODConv#5/#23/#27/#35). Here a one-sample training batch is normalised with the running
    statistics, as in eval mode, and leaves them unchanged; every larger batch uses its own
    statistics, as BatchNorm does. The BN is an ``nn.BatchNorm1d``, so SyncBN conversion and
    ``model.eval()`` treat it like every other BN in the network; a synced BN in a job of several
    processes has the global batch, so it normalises a one-sample local batch itself (and every
    process takes part in its all-reduce, as it must).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Tuple[int, int], groups: int = 1,
                 num_kernels: int = 4, reduction: int = 16, min_hidden: int = 16):
        super().__init__()
        if reduction < 1 or min_hidden < 1:
            raise ValueError(f"reduction and min_hidden must be >= 1, got {reduction} and {min_hidden}")
        hidden = max(in_channels // reduction, min_hidden)
        self.kernel_size = kernel_size
        self.fc = nn.Linear(in_channels, hidden, bias=False)
        self.bn = nn.BatchNorm1d(hidden)
        self.channel_fc = nn.Linear(hidden, in_channels)
        depthwise = groups == in_channels == out_channels
        self.filter_fc = None if depthwise else nn.Linear(hidden, out_channels)
        self.spatial_fc = None if kernel_size == (1, 1) else nn.Linear(hidden, kernel_size[0] * kernel_size[1])
        self.kernel_fc = None if num_kernels == 1 else nn.Linear(hidden, num_kernels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As ODConv's code: kaiming-normal (fan_out) weights and zero biases, BN at identity.
        for fc in (self.fc, self.channel_fc, self.filter_fc, self.spatial_fc, self.kernel_fc):
            if fc is not None:
                nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
                if fc.bias is not None:
                    nn.init.zeros_(fc.bias)
        self.bn.reset_parameters()

    def heads(self):
        """The sigmoid heads that exist (inflation sets them to a constant 1/2)."""
        return [fc for fc in (self.channel_fc, self.filter_fc, self.spatial_fc) if fc is not None]

    def _normalise(self, z: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if self.training and z.shape[0] == 1 and bn.track_running_stats and not _spans_processes(bn):
            return F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return bn(z)

    def forward(self, x: torch.Tensor, temperature: torch.Tensor) -> OmniHeads:
        h = F.relu(self._normalise(self.fc(x.mean((2, 3)))))
        sigmoid = lambda fc: None if fc is None else torch.sigmoid(fc(h) / temperature)  # noqa: E731
        spatial = sigmoid(self.spatial_fc)
        if spatial is not None:
            spatial = spatial.view(-1, *self.kernel_size)
        kernel = None if self.kernel_fc is None else torch.softmax(self.kernel_fc(h) / temperature, dim=1)
        return OmniHeads(sigmoid(self.channel_fc), sigmoid(self.filter_fc), spatial, kernel)


def _spans_processes(bn: nn.Module) -> bool:
    """A BN converted to a synced one (torch's SyncBatchNorm, the gloo one), in a multi-process job."""
    return type(bn) is not nn.BatchNorm1d and dist.is_available() and dist.is_initialized() \
        and dist.get_world_size() > 1
