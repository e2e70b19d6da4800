"""Object detection: the detector, its loss dict and COCO bbox evaluation, for the shared Trainer.

Same interface as ClassificationTask (engine/tasks/base.py). Batches are (list of images, list of targets), as
torchvision's detectors take them; a training step returns the sum of the detector's losses
and each loss as a metric; evaluation returns COCO AP (pycocotools), exact under DDP.
"""
import torch
import torch.nn as nn

from a2d2c.data.aspect_ratio import build_grouped_train_loader
from a2d2c.data.coco import detection_collate, find_detection_dataset
from a2d2c.data.loader import build_train_loader
from a2d2c.engine.tasks.coco_eval import CocoEvaluator
from a2d2c.errors import ConfigError


class DetectionTask:
    """`model` builds the detector from the conv options (a partial of `a2d2c.models.detection.build_detector`)."""

    collate_fn = staticmethod(detection_collate)
    primary_metric = "AP"

    def __init__(self, model, conv_options=None, aspect_ratio_group_factor: int = -1):
        self.model_factory = model
        self.conv_options = dict(conv_options or {})
        # >= 0: batch images of similar aspect ratio together (torchvision's references; -1: off)
        self.aspect_ratio_group_factor = aspect_ratio_group_factor

    def build_model(self) -> nn.Module:
        try:
            return self.model_factory(**self.conv_options)
        except ValueError as e:  # the factories' one-line messages for unknown names and bad options
            raise ConfigError(str(e)) from e

    def complexity_module(self, model: nn.Module) -> nn.Module:
        """The part of `model` whose params / MAdds the run reports: the backbone with its FPN.

        The heads' cost depends on how many proposals / anchors survive thresholds and NMS, which
        varies with the weights; the backbone + FPN count is fixed by the architecture and input
        size, and it is where the conv types differ.
        """
        return model.backbone

    def input_size(self, image_size: int):
        """What one image looks like for counting params / MAdds: square, `image_size` px (the detector resizes it)."""
        return (3, image_size, image_size)

    def build_train_loader(self, dataset, batch_size, dist_info, seed, num_workers=0, pin_memory=False):
        if self.aspect_ratio_group_factor >= 0:
            return build_grouped_train_loader(dataset, batch_size, dist_info, seed, num_workers, pin_memory,
                                              self.collate_fn, group_factor=self.aspect_ratio_group_factor)
        return build_train_loader(dataset, batch_size, dist_info, seed, num_workers, pin_memory, self.collate_fn)

    def move_batch(self, batch, device, memory_format=torch.contiguous_format):
        # The detector pads and stacks the images itself, so `memory_format` applies to its weights only.
        images, targets = batch
        non_blocking = device.type == "cuda"
        images = [image.to(device, non_blocking=non_blocking) for image in images]
        targets = [{k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
                    for k, v in target.items()} for target in targets]
        return images, targets

    def batch_size(self, batch) -> int:
        return len(batch[0])

    def training_step(self, model, batch):
        images, targets = batch
        losses = model(images, targets)  # torchvision detectors return their loss dict in train mode
        loss = sum(losses.values())
        return loss, {"loss": loss.detach(), **{name: value.detach() for name, value in losses.items()}}

    @torch.no_grad()
    def evaluate(self, model, loader, device, amp_dtype=None, memory_format=torch.contiguous_format) -> dict:
        """COCO bbox AP, AP50, AP75, APs, APm, APl (in [0, 1]) over the whole split, and "samples"."""
        was_training = model.training
        model.eval()
        dataset = find_detection_dataset(loader.dataset)
        evaluator = CocoEvaluator(dataset.coco, dataset.label_to_category)
        for batch in loader:
            images, targets = self.move_batch(batch, device, memory_format)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = model(images)
            # Boxes come back in the input images' pixels: the eval transforms keep the original size.
            evaluator.update([t["image_id"] for t in targets], outputs)
        model.train(was_training)
        return evaluator.compute()
