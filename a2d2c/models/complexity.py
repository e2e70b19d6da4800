"""Parameters and multiply-adds in the papers' convention.

One image at batch size 1, in eval mode, counted by ``torch.utils.flop_counter`` (MAdds =
FLOPs / 2). At batch 1 a dynamic layer computes exactly its canonical form: the attention, the
kernel aggregation (one matrix product) and one convolution, which is how DyConv counts
(DY-ResNet-18 about 1.86 GMAdds). A2D2C counts its K responses. Element-wise work (softmax,
pooling, the mix of responses) is not counted, as in the papers.

The count never depends on a dynamic layer's ``path``: the same function computed as K
responses would count K convs (DY-ResNet-18: 6.9 G), so it is taken on a copy whose dynamic
layers all run the canonical form; the caller's model is left as it was.

Build the model under ``torch.device("meta")`` to count a large model instantly.
"""
from __future__ import annotations

from typing import Dict, Sequence

import copy

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from a2d2c.layers.dynamic_conv import CANONICAL_PATH, DynamicConv2d


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def canonical_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose dynamic layers compute DyConv's canonical form."""
    counted = copy.deepcopy(model)
    for module in counted.modules():
        if isinstance(module, DynamicConv2d):
            module.path = CANONICAL_PATH
    return counted


def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> int:
    model = canonical_copy(model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.randn(1, *input_size, device=device, dtype=dtype)
    model.eval()  # the copy's mode: the caller's model keeps its own
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def count_complexity(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> Dict[str, int]:
    """{"params": number of parameters, "macs": multiply-adds of one image}."""
    return {"params": count_params(model), "macs": count_macs(model, input_size)}
