"""Softmax temperature of the dynamic layers and its annealing schedule."""
from __future__ import annotations

import torch.nn as nn

from .mixture_conv import MixtureConv2d


def set_temperature(model: nn.Module, tau: float) -> int:
    """Set tau on every dynamic layer of ``model``; returns how many layers were set."""
    count = 0
    for module in model.modules():
        if isinstance(module, MixtureConv2d):
            module.temperature = float(tau)
            count += 1
    return count


def annealed_temperature(step: int, anneal_steps: int, start: float = 30.0,
                         end: float = 1.0) -> float:
    """DyConv's schedule: tau falls linearly from ``start`` to ``end`` over ``anneal_steps``
    iterations, then stays at ``end``."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return float(end)
    return float(start + (end - start) * step / anneal_steps)
