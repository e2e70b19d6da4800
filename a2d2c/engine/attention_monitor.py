"""What the Trainer does with the dynamic convs' attention at each evaluation (`trainer.attention`).

Statistics come from the attention the evaluation batches compute anyway (tracking/attention_stats.py),
summed over ranks; the training step is untouched. After τ's annealing, a layer whose kernel
usage balance is below `collapse_below` is named in a warning: every sample and position chose
the same kernel, so the layer is a static conv at K times its cost.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext

import torch.nn as nn

from a2d2c.tracking.attention_stats import AttentionProbe, attention_layers, collapsed_layers, metrics_record

log = logging.getLogger(__name__)


class AttentionMonitor:
    def __init__(self, model: nn.Module, stats: bool = True, collapse_below: float = 0.1, images: int = 0):
        self.model = model
        self.enabled = bool(stats) and bool(attention_layers(model))  # a static model has nothing to measure
        self.collapse_below = collapse_below
        self.images = images if self.enabled else 0
        self.probe = None

    @classmethod
    def from_config(cls, model: nn.Module, acfg, pictures: bool) -> "AttentionMonitor":
        """`acfg`: trainer.attention (absent in configs saved before it existed: the defaults);
        `pictures`: whether anything can show them (a wandb run)."""
        acfg = acfg or {}
        return cls(model, acfg.get("stats", True), acfg.get("collapse_below", 0.1),
                   acfg.get("images", 4) if pictures else 0)

    def watching(self):
        """A context for the evaluation of `model`: the hooks while it runs."""
        self.probe = AttentionProbe(self.model, keep=self.images) if self.enabled else None
        return self.probe if self.probe is not None else nullcontext()

    def metrics(self, annealed: bool, is_main: bool = True) -> dict:
        """The evaluation's attention metrics (every rank calls this: the sums are all-reduced), and the
        collapse warning once τ has reached its end."""
        if self.probe is None:
            return {}
        self.probe.stats.all_reduce()
        result = self.probe.stats.result()
        record = metrics_record(result)
        if annealed and self.collapse_below > 0:
            collapsed = collapsed_layers(result, self.collapse_below)
            record["attention/collapsed_layers"] = len(collapsed)
            if collapsed and is_main:
                log.warning("attention collapsed after τ's annealing in %d of %d layers (kernel usage balance < %g): "
                            "%s; each acts as one static kernel while it keeps and trains K=%d",
                            len(collapsed), len(result), self.collapse_below,
                            ", ".join(f"{name} ({result[name]['balance']:.3f})" for name in collapsed),
                            max(self.probe.stats.num_kernels[name] for name in collapsed))
        return record

    def pictures(self) -> list:
        """[(caption, H x W x 3 uint8)] of the first evaluation images (reporting/attention_maps.py)."""
        if self.probe is None or not self.images or self.probe.images is None:
            return []
        from a2d2c.reporting.attention_maps import attention_panels
        return attention_panels(self.probe.images, self.probe.examples, self.probe.shapes)
