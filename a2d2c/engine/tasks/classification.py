"""Image classification: the model, the loss (with optional label smoothing and mixup/cutmix) and top-k evaluation.

The Trainer knows nothing about images or labels; everything task-specific is here (the
interface: engine/tasks/base.py).
"""
import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from a2d2c.data.loader import build_train_loader
from a2d2c.distributed.process_group import all_reduce_sum
from a2d2c.errors import ConfigError


class ClassificationTask:
    """`model` builds the network from the conv options (a partial of `a2d2c.models.build_classifier`)."""

    collate_fn = None  # default collation stacks (image, label) pairs
    primary_metric = "top1"  # what picks the best checkpoint unless trainer.monitor says otherwise

    def __init__(self, model, num_classes: int, conv_options=None, label_smoothing: float = 0.0,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, mixup_prob: float = 1.0,
                 mixup_switch_prob: float = 0.5, topk=(1, 5), decode: str = "cpu",
                 image_size: int = 224, resize_size: int = 256):
        self.model_factory = model
        self.conv_options = dict(conv_options or {})
        self.num_classes = num_classes
        self.topk = tuple(topk)
        if decode not in ("cpu", "gpu"):
            raise ConfigError(f"dataset.decode={decode!r} is not valid; use cpu or gpu")
        # decode=gpu: the loaders carry JPEG bytes; move_batch decodes and augments on the device.
        self.device_pipelines = None
        if decode == "gpu":
            from a2d2c.data.gpu_decode import GpuImagePipeline, collate_encoded
            self.collate_fn = collate_encoded
            self.device_pipelines = {train: GpuImagePipeline(train, image_size, resize_size)
                                     for train in (True, False)}
        if mixup_alpha > 0 or cutmix_alpha > 0:
            # Mixup emits soft targets with the smoothing already folded in.
            self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mixup_prob,
                               switch_prob=mixup_switch_prob, label_smoothing=label_smoothing,
                               num_classes=num_classes)
            self.criterion = SoftTargetCrossEntropy()
        else:
            self.mixup = None
            self.criterion = LabelSmoothingCrossEntropy(label_smoothing) if label_smoothing > 0 else nn.CrossEntropyLoss()

    def build_model(self) -> nn.Module:
        try:
            return self.model_factory(**self.conv_options)
        except ValueError as e:  # the model factory's one-line messages for unknown names and bad options
            raise ConfigError(str(e)) from e

    def complexity_module(self, model: nn.Module) -> nn.Module:
        """The part of `model` whose params / MAdds the run reports: all of it."""
        return model

    def input_size(self, image_size: int):
        return (3, image_size, image_size)

    def build_train_loader(self, dataset, batch_size, dist_info, seed, num_workers=0, pin_memory=False):
        return build_train_loader(dataset, batch_size, dist_info, seed, num_workers, pin_memory, self.collate_fn)

    def move_batch(self, batch, device, memory_format=torch.contiguous_format, train=True):
        images, targets = batch
        non_blocking = device.type == "cuda"
        if self.device_pipelines is not None:
            images = self.device_pipelines[train](images, device).contiguous(memory_format=memory_format)
        else:
            images = images.to(device, non_blocking=non_blocking, memory_format=memory_format)
        return images, targets.to(device, non_blocking=non_blocking)

    def batch_size(self, batch) -> int:
        return len(batch[1])

    def training_step(self, model, batch):
        images, targets = batch
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        loss = self.criterion(model(images), targets)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, model, loader, device, amp_dtype=None, memory_format=torch.contiguous_format) -> dict:
        """Exact top-k accuracy (in %) and mean loss over the whole split, summed over ranks."""
        was_training = model.training
        model.eval()
        ks = [min(k, self.num_classes) for k in self.topk]
        # [samples, loss sum, correct@k...], accumulated on the device, reduced once at the end
        totals = torch.zeros(2 + len(ks), dtype=torch.float64, device=device)
        for batch in loader:
            images, targets = self.move_batch(batch, device, memory_format, train=False)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(images)
            logits = logits.float()
            totals[0] += len(targets)
            totals[1] += nn.functional.cross_entropy(logits, targets, reduction="sum")
            top = logits.topk(max(ks), dim=1).indices
            hits = top == targets[:, None]
            for j, k in enumerate(ks):
                totals[2 + j] += hits[:, :k].any(dim=1).sum()
        all_reduce_sum(totals)
        model.train(was_training)
        n = totals[0].item()
        metrics = {"loss": totals[1].item() / n}
        for j, k in enumerate(self.topk):
            metrics[f"top{k}"] = 100.0 * totals[2 + j].item() / n
        metrics["samples"] = int(n)
        return metrics
