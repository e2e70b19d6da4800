"""Softmax temperature of the dynamic layers and its annealing schedule."""
from __future__ import annotations

import torch
import torch.nn as nn

from .mixture_conv import MixtureConv2d


def has_temperature(module: nn.Module) -> bool:
    """Whether ``module`` is a dynamic layer with a tau (CondConv's sigmoid routing has none)."""
    return isinstance(module, MixtureConv2d) and module.temperature is not None


def set_temperature(model: nn.Module, tau: float) -> int:
    """Set tau on every dynamic layer of ``model``; returns how many layers were set.

    In place: the buffer stays the same tensor, so a compiled model does not recompile."""
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if has_temperature(module):
                module.temperature.fill_(float(tau))
                count += 1
    return count


def annealed_temperature(progress: float, duration: float, start: float = 30.0,
                         end: float = 1.0) -> float:
    """DyConv's schedule: tau falls linearly from ``start`` to ``end`` over ``duration``, then stays at
    ``end``. ``progress`` and ``duration`` share a unit: the Trainer uses (fractional) epochs."""
    if duration <= 0 or progress >= duration:
        return float(end)
    return float(start + (end - start) * progress / duration)
