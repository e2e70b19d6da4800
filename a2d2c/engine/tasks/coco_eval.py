"""COCO bbox evaluation through pycocotools, exact under DDP.

Detections travel as N x 7 float64 arrays of rows [image_id, x, y, w, h, score, category_id]
(COCO's xywh boxes, in the pixels of the original image; pycocotools' own array format),
compact to gather across ranks. Under DDP every rank's detections are gathered, de-duplicated
by image id (a padded sampler evaluates some images twice) and scored once, on rank 0, and the
metrics are broadcast, so every rank returns the numbers of the whole split.

Metrics: AP (IoU .50:.95), AP50, AP75 and AP over small / medium / large objects, in [0, 1]. An
area range with no ground-truth object has no AP (pycocotools returns -1): it is NaN here.
"""
from __future__ import annotations

import contextlib
import io
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from a2d2c.distributed.process_group import all_gather_object, is_distributed

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]


def detections_to_coco(image_id: int, boxes_xyxy, scores, labels,
                       label_to_category: Optional[Sequence[int]] = None) -> np.ndarray:
    """One image's detections (xyxy boxes, scores, labels) as N x 7 COCO result rows.

    `label_to_category[label]` is the COCO category id of a model label; None keeps labels as ids.
    Label 0 is the background: RetinaNet scores it like any class (torchvision's convention of
    counting the background in num_classes), so it can come out; it is no detection.
    """
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float64).reshape(-1, 4).cpu()
    scores = torch.as_tensor(scores, dtype=torch.float64).cpu()
    labels = torch.as_tensor(labels).cpu().long()
    if label_to_category is not None:
        keep = labels != 0
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    rows = np.empty((len(boxes), 7), dtype=np.float64)
    rows[:, 0] = image_id
    rows[:, 1:3] = boxes[:, :2].numpy()
    rows[:, 3:5] = (boxes[:, 2:] - boxes[:, :2]).numpy()
    rows[:, 5] = scores.numpy()
    rows[:, 6] = labels.numpy() if label_to_category is None else np.asarray(label_to_category)[labels.numpy()]
    return rows


def _results_api(coco_gt: COCO, detections: np.ndarray) -> COCO:
    """The detections as a pycocotools COCO object; what ``coco_gt.loadRes`` builds, but it also takes no detection."""
    unknown = set(detections[:, 0].astype(np.int64).tolist()) - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"detections for image ids the ground truth does not have: {sorted(unknown)[:5]}")
    annotations = [{"id": i + 1, "image_id": int(row[0]), "bbox": row[1:5].tolist(), "area": float(row[3] * row[4]),
                    "score": float(row[5]), "category_id": int(row[6]), "iscrowd": 0}
                   for i, row in enumerate(detections)]
    results = COCO()
    results.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                       "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        results.createIndex()
    return results


def evaluate_coco(coco_gt: COCO, detections, image_ids: Optional[Sequence[int]] = None) -> dict:
    """COCO bbox metrics of `detections` (N x 7 rows, or COCO result dicts) on `image_ids` (default: all images)."""
    if not isinstance(detections, np.ndarray):
        detections = np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in detections],
                              dtype=np.float64)
    detections = detections.reshape(-1, 7)
    evaluator = COCOeval(coco_gt, _results_api(coco_gt, detections), "bbox")
    evaluator.params.imgIds = sorted(coco_gt.getImgIds() if image_ids is None else set(int(i) for i in image_ids))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and its summary table
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) if value >= 0 else float("nan") for name, value in zip(COCO_METRICS, evaluator.stats)}


def merge_detections(per_rank: Sequence[Mapping[int, np.ndarray]]) -> dict:
    """One entry per image id: an image a padded sampler gave to two ranks (or twice to one) counts once."""
    merged = {}
    for detections in per_rank:
        for image_id, rows in detections.items():
            merged.setdefault(image_id, rows)
    return merged


class CocoEvaluator:
    """Collects a split's detections image by image, then scores them with pycocotools.

    Every image passed to ``update`` counts, also those with no detection (their ground truth
    objects are misses). ``compute`` is a collective under DDP: every rank must call it.
    """

    def __init__(self, coco_gt: COCO, label_to_category: Optional[Sequence[int]] = None):
        self.coco_gt = coco_gt
        self.label_to_category = label_to_category
        self.detections = {}

    def update(self, image_ids: Sequence[int], outputs: Sequence[Mapping[str, torch.Tensor]]):
        """`outputs`: the detector's eval outputs, dicts of "boxes" (xyxy, original image pixels), "scores", "labels"."""
        for image_id, output in zip(image_ids, outputs):
            self.detections.setdefault(int(image_id), detections_to_coco(
                int(image_id), output["boxes"], output["scores"], output["labels"], self.label_to_category))

    def compute(self) -> dict:
        """Metrics of every image seen on any rank, plus "samples": the number of distinct images."""
        merged = merge_detections(all_gather_object(self.detections))
        metrics = None
        if not is_distributed() or dist.get_rank() == 0:
            rows = np.concatenate(list(merged.values())) if merged else np.zeros((0, 7))
            metrics = {**evaluate_coco(self.coco_gt, rows, image_ids=list(merged)), "samples": len(merged)}
        if is_distributed():
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        return metrics
