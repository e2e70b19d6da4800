"""ONNX export with a dynamic batch dimension, for every conv type.

Peers' dynamic convs cannot be exported for any batch size: their grouped conv has
groups = batch size, a constant in the graph. Ours take the K-responses path during export
(``DynamicConv2d`` checks ``torch.onnx.is_in_onnx_export()``), whose graph has no such constant.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn as nn


def export_onnx(model: nn.Module, path: Union[str, Path], input_size: Sequence[int] = (3, 224, 224),
                opset: int = 17) -> Path:
    """Export ``model`` (in eval mode) to ``path`` with input "images" and output "logits",
    both with a dynamic batch dimension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    example = torch.randn(2, *input_size, device=param.device, dtype=param.dtype)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript-based exporter works from torch 2.4 to today's releases; newer
            # torch warns that it prefers the dynamo exporter.
            warnings.simplefilter("ignore")
            kwargs = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
            torch.onnx.export(model, (example,), str(path), input_names=["images"],
                              output_names=["logits"], opset_version=opset,
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                              **kwargs)
    finally:
        model.train(was_training)
    return path
