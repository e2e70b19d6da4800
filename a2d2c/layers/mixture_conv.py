"""Common base of the conv layers that mix K candidate kernels with an attention."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from .functional import same_padding, to_2tuple

IntOrPair = Union[int, Sequence[int]]


def init_like_conv2d_(weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> None:
    """nn.Conv2d's default init, applied to each leading slice of a K x O x Cg x kh x kw tensor
    (or to a 4-D / 2-D weight directly): every candidate kernel is an independent conv weight."""
    slices = weight if weight.dim() == 5 else weight.unsqueeze(0)
    for w in slices:
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    if bias is not None:
        fan_in = weight[0].numel() // weight.shape[1] if weight.dim() == 5 else weight[0].numel()
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(bias, -bound, bound)


class MixtureConv2d(nn.Module):
    """Holds nn.Conv2d's hyper-parameters plus K and the softmax temperature.

    ``temperature=None`` (CondConv: sigmoid routing, no softmax): the layer has no tau, its
    ``temperature`` is None, not in its state dict, and ``set_temperature`` passes it by.

    ``temperature`` is a persistent 0-dim buffer: it is model state, so a checkpoint saved
    mid-annealing reloads at its own tau. ``set_temperature`` writes it in place (no new tensor:
    torch.compile does not recompile, EMA copies keep following). State dicts from before it
    was a buffer load too, keeping the current value (``_load_from_state_dict``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: Optional[IntOrPair] = None,
                 dilation: IntOrPair = 1, groups: int = 1, num_kernels: int = 4,
                 temperature: Optional[float] = 1.0):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}")
        if num_kernels < 1:
            raise ValueError(f"num_kernels must be >= 1, got {num_kernels}")
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = to_2tuple(kernel_size)
        self.stride = to_2tuple(stride)
        self.dilation = to_2tuple(dilation)
        self.padding = same_padding(self.kernel_size, self.dilation) if padding is None \
            else to_2tuple(padding)
        self.groups = groups
        self.num_kernels = num_kernels
        self.register_buffer("temperature", None if temperature is None else torch.tensor(float(temperature)))
        # Called with the attention each forward computes, while set (tracking/attention_stats.py sets it
        # during evaluation): the statistics read what the layer computed, at no cost of their own.
        self.attention_observer = None

    def _observe(self, attn: torch.Tensor) -> torch.Tensor:
        if self.attention_observer is not None:
            self.attention_observer(attn)
        return attn

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Older checkpoints have no tau: keep the current one. Every other key stays strict.
        key = prefix + "temperature"
        absent = key not in state_dict
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if absent and key in missing_keys:
            missing_keys.remove(key)

    def output_size(self, height: int, width: int):
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(
            (height, width), self.padding, self.dilation, self.kernel_size, self.stride))

    def conv_args(self):
        return self.stride, self.padding, self.dilation, self.groups

    def _apply(self, fn, recurse=True):
        # ``model.to(memory_format=torch.channels_last)`` hands every 4-D and 5-D tensor to a
        # conversion that only accepts rank 4, so our K x O x Cg x kh x kw kernels would stop
        # it. Convert them as the (K*O) x Cg x kh x kw stack of conv weights they are.
        def apply_to_kernels(t):
            if t.dim() != 5:
                return fn(t)
            try:
                return fn(t)
            except RuntimeError as e:
                if "channels_last" not in str(e):
                    raise
                return fn(t.flatten(0, 1)).view(t.shape)

        return super()._apply(apply_to_kernels, recurse)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if getattr(self, "bias", None) is None:
            s += ", bias=False"
        s += f", num_kernels={self.num_kernels}"
        return s if self.temperature is None else s + f", temperature={float(self.temperature):g}"
