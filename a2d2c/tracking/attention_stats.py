"""What the dynamic convs' attention does, measured on evaluation batches.

For every layer that mixes K > 1 kernels, each *unit* (a sample for the per-sample types, a sample
at an output position for A2D2C / A2D2C+) has a distribution p over the K kernels:

* ``entropy``: the mean over units of H(p) / log K, 1 when every unit spreads its weight evenly,
  0 when every unit puts it all on one kernel (which may differ from unit to unit);
* ``usage``: the mean of p over units, how much each kernel is used;
* ``balance``: H(usage) / log K, 1 when the kernels are used equally, 0 when one kernel takes all
  of it everywhere: the layer has **collapsed** into a static conv of that kernel, at K times its
  cost. balance >= entropy always (H is concave), so a low balance means both are low;
* ``kernels_90``: how few kernels carry 90% of the usage.

CondConv's sigmoid gates do not sum to 1; their distribution is the gates normalised by their sum.
ODConv's is its kernel attention alpha_w. ``AttentionProbe`` sets every such layer's
``attention_observer`` while evaluation runs, so it reads the attention the forward computes anyway:
no extra computation, and nothing at all in the training step.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from a2d2c.distributed.process_group import all_reduce_sum
from a2d2c.layers import CondConv2d, MixtureConv2d


def attention_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """{qualified name: layer} of the layers whose attention chooses among K > 1 kernels."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MixtureConv2d) and m.num_kernels > 1}


def kernel_distribution(layer: nn.Module, attn: torch.Tensor) -> torch.Tensor:
    """The layer's attention as distributions over its K kernels, B x K x P (P = 1 per sample, else positions)."""
    attn = attn.detach()
    attn = attn.to(torch.promote_types(attn.dtype, torch.float32))  # float64 stays, bf16 / fp16 widen
    if isinstance(layer, CondConv2d):
        attn = attn / attn.sum(1, keepdim=True)
    return attn.reshape(attn.shape[0], attn.shape[1], -1)


def normalised_entropy(p: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """H(p) / log K along ``dim`` (0 log 0 = 0)."""
    k = p.shape[dim]
    return -torch.special.xlogy(p, p).sum(dim) / math.log(k)


class AttentionStats:
    """Sums over evaluation units, per layer; ``result()`` after ``all_reduce()`` is exact under DDP."""

    def __init__(self, layers: Dict[str, nn.Module], device=None):
        # On the model's device from the start: a rank whose shard had no batch still all-reduces with the others.
        self.num_kernels = {name: layer.num_kernels for name, layer in layers.items()}
        self.totals = {name: torch.zeros(k + 2, dtype=torch.float64, device=device)
                       for name, k in self.num_kernels.items()}

    def update(self, name: str, p: torch.Tensor) -> None:
        """p: B x K x P distributions."""
        total = self.totals[name]
        p = p.to(total.device, torch.float64)
        total[0] += normalised_entropy(p).sum()
        total[1] += p.shape[0] * p.shape[2]
        total[2:] += p.sum((0, 2))

    def all_reduce(self) -> None:
        for total in self.totals.values():
            all_reduce_sum(total)

    def result(self) -> Dict[str, dict]:
        out = {}
        for name, total in self.totals.items():
            count = total[1].item()
            if count == 0:
                continue
            usage = total[2:] / count
            ranked = usage.sort(descending=True).values.cumsum(0)
            out[name] = {"entropy": total[0].item() / count,
                         "balance": normalised_entropy(usage, 0).item(),
                         "usage": usage.tolist(),
                         "kernels_90": int((ranked < 0.9 - 1e-12).sum().item()) + 1}
        return out


def collapsed_layers(result: Dict[str, dict], threshold: float) -> List[str]:
    """Layers whose kernel usage balance is below ``threshold``: one kernel does (nearly) all the work."""
    return [name for name, stats in result.items() if stats["balance"] < threshold]


def metrics_record(result: Dict[str, dict]) -> Dict[str, float]:
    """Flat keys for metrics.jsonl and wandb: one section per quantity, one line per layer (wandb groups by
    the part before '/'), and the mean over layers."""
    if not result:
        return {}
    record = {}
    for quantity in ("entropy", "balance"):
        record[f"attention/mean_{quantity}"] = sum(s[quantity] for s in result.values()) / len(result)
        record.update({f"attention_{quantity}/{name}": s[quantity] for name, s in result.items()})
    return record


class AttentionProbe:
    """Observes a model's attention layers while a ``with`` block runs (evaluation only).

    ``keep``: also keep the first ``keep`` inputs of the model and each layer's distributions for
    them (B x K x P), and each per-position layer's map size, for pictures.
    """

    def __init__(self, model: nn.Module, keep: int = 0):
        self.model = model
        self.layers = attention_layers(model)
        param = next(model.parameters(), None)
        self.stats = AttentionStats(self.layers, None if param is None else param.device)
        self.keep = keep
        self.images: Optional[torch.Tensor] = None
        self.examples: Dict[str, torch.Tensor] = {}
        self.shapes: Dict[str, tuple] = {}
        self._handles = []

    def __enter__(self):
        if self.keep:
            self._handles.append(self.model.register_forward_pre_hook(self._keep_images))
        for name, layer in self.layers.items():
            layer.attention_observer = self._observer(name, layer)
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for layer in self.layers.values():
            layer.attention_observer = None

    def _keep_images(self, module, inputs):
        if not (inputs and torch.is_tensor(inputs[0])):
            return  # a detector takes a list of images of different sizes: statistics, but no pictures
        if self.images is None or len(self.images) < self.keep:
            got = inputs[0][: self.keep - (0 if self.images is None else len(self.images))].detach().float().cpu()
            self.images = got if self.images is None else torch.cat([self.images, got])

    def _observer(self, name: str, layer: nn.Module):
        @torch.compiler.disable  # a compiled eval model calls it eagerly, outside its graph
        def observe(attn: torch.Tensor) -> None:
            if layer.training:
                return  # evaluation only: a training forward is never measured
            p = kernel_distribution(layer, attn)
            self.stats.update(name, p)
            have = 0 if name not in self.examples else len(self.examples[name])
            if have < self.keep:
                self.shapes[name] = tuple(attn.shape[2:]) if attn.dim() == 4 else (1, 1)
                got = p[: self.keep - have].cpu()
                self.examples[name] = got if name not in self.examples else torch.cat([self.examples[name], got])
        return observe
