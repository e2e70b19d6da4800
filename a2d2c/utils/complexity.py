"""Parameters and multiply-adds in the papers' convention.

One image at batch size 1, in eval mode, counted by ``torch.utils.flop_counter`` (MAdds =
FLOPs / 2). At batch 1 a dynamic layer computes exactly its canonical form: the attention, the
kernel aggregation (one matrix product) and one convolution, which is how DyConv counts
(DY-ResNet-18 about 1.86 GMAdds). A2D2C counts its K responses. Element-wise work (softmax,
pooling, the mix of responses) is not counted, as in the papers.

Build the model under ``torch.device("meta")`` to count a large model instantly.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> int:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.randn(1, *input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_complexity(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> Dict[str, int]:
    """{"params": number of parameters, "macs": multiply-adds of one image}."""
    return {"params": count_params(model), "macs": count_macs(model, input_size)}
