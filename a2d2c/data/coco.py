"""COCO-format detection data: COCO 2017 from its on-disk layout, and any dataset in the same format (`shapes`).

Samples are (image, target): the image a float tensor in [0, 1] (the detectors normalise it
themselves), the target ``{"boxes": N x 4 xyxy in pixels, "labels": N int64, "image_id": int}``.
Labels are contiguous, 1..C in the order of the sorted category ids; 0 is the background, as
torchvision's detectors expect. ``label_to_category`` maps them back for COCO evaluation.
Following torchvision's detection references, crowd annotations are not training targets
(COCOeval reads them from the JSON itself), boxes are clipped to the image, and boxes with no
width or height after that are dropped.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset, Subset
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
from torchvision.transforms import v2

from a2d2c.errors import ConfigError

log = logging.getLogger(__name__)

COCO_SPLITS = ("train", "val")
COCO_DOWNLOAD = "https://cocodataset.org/#download"
COCO_FORMAT = "https://cocodataset.org/#format-data"


def detection_transforms(train: bool) -> v2.Compose:
    """Transforms v2 on (image, target): horizontal flips (boxes follow) for training, then a float image."""
    flip = [v2.RandomHorizontalFlip(0.5)] if train else []
    return v2.Compose([v2.ToImage(), *flip, v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()])


def detection_collate(batch):
    """(list of images, list of targets): detectors take images of different sizes, so nothing is stacked."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def _clipped_xyxy(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


def _has_area(xyxy: torch.Tensor) -> torch.Tensor:
    return (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])


def _check_box_format(coco, annotation_file) -> None:
    """Every bbox must be [x, y, width, height] finite numbers: anything else is named in one line
    rather than crashing later inside a transform."""
    for ann in coco.anns.values():
        box = ann.get("bbox")
        if not (isinstance(box, (list, tuple)) and len(box) == 4
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            raise ConfigError(f"{annotation_file}: annotation {ann.get('id')} of image {ann.get('image_id')} "
                              f"has bbox {box!r}; expected [x, y, width, height] as 4 finite numbers")


COCO_KEYS = ("images", "annotations", "categories")


def _load_coco(image_dir, annotation_file) -> CocoDetection:
    """torchvision's CocoDetection, with a file pycocotools cannot index named in one line."""
    format_hint = f"a COCO instances file is a JSON object with lists {', '.join(map(repr, COCO_KEYS))} ({COCO_FORMAT})"
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its loading progress
            base = CocoDetection(str(image_dir), str(annotation_file))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{annotation_file} is not valid JSON ({e}); {format_hint}") from e
    except AssertionError as e:  # pycocotools asserts that the JSON is an object
        raise ConfigError(f"{annotation_file} is not a JSON object; {format_hint}") from e
    except (KeyError, TypeError) as e:  # an entry without "id" / "image_id", or not an object
        raise ConfigError(f"{annotation_file}: an entry of it lacks a key or is not an object "
                          f"({type(e).__name__}: {e}); {format_hint}") from e
    missing = [key for key in COCO_KEYS if key not in base.coco.dataset]
    if missing:
        raise ConfigError(f"{annotation_file} has no {' or '.join(map(repr, missing))}; {format_hint}")
    return base


def _is_trainable_image(annotations: list) -> bool:
    # torchvision references' `_coco_remove_images_without_annotations`: keep an image when at
    # least one of its boxes is more than 1 px wide and high (crowd boxes included).
    return any(all(side > 1 for side in ann["bbox"][2:]) for ann in annotations)


class CocoDetectionDataset(Dataset):
    """Images of `image_dir` with the instances JSON `annotation_file`.

    Args:
        train: training transforms (random horizontal flip); also the default of the next one.
        remove_images_without_annotations: drop images with no usable box (default: `train`).
            Evaluation keeps every image, so that false positives on empty images count.
        transforms: v2 transforms on (image, target); default ``detection_transforms(train)``.

    Attributes: ``coco`` (the pycocotools ground truth), ``category_ids`` (sorted: label i is
    ``category_ids[i - 1]``), ``classes``, ``label_to_category``, ``num_images_removed``,
    ``num_degenerate_boxes`` (dropped boxes of the kept images) and ``num_orphan_annotations``
    (annotations of image ids the file does not list; ignored, with a warning).
    ``a2d2c.data.class_map.apply_class_map`` makes an evaluation split use the training split's labels.
    """

    def __init__(self, image_dir, annotation_file, train: bool = False,
                 remove_images_without_annotations: Optional[bool] = None, transforms=None):
        base = _load_coco(image_dir, annotation_file)
        self.coco = base.coco
        _check_box_format(self.coco, annotation_file)
        # pycocotools indexes an annotation of an image id missing from "images" but no image reads it.
        self.num_orphan_annotations = sum(ann.get("image_id") not in self.coco.imgs for ann in self.coco.anns.values())
        if self.num_orphan_annotations:
            log.warning("%s: %d annotations refer to image ids missing from its 'images' list; they are ignored",
                        annotation_file, self.num_orphan_annotations)
        self.annotation_file = annotation_file
        self.set_label_order(sorted(self.coco.getCatIds()))

        remove = train if remove_images_without_annotations is None else remove_images_without_annotations
        self.indices = [i for i, image_id in enumerate(base.ids)
                        if not remove or _is_trainable_image(self.coco.imgToAnns[image_id])]
        self.num_images_removed = len(base.ids) - len(self.indices)
        self.num_degenerate_boxes = self._check_annotations(annotation_file, [base.ids[i] for i in self.indices])
        if self.num_images_removed or self.num_degenerate_boxes:
            log.info("%s: %d images without usable boxes dropped; %d boxes without area ignored",
                     annotation_file, self.num_images_removed, self.num_degenerate_boxes)
        self.dataset = wrap_dataset_for_transforms_v2(base, target_keys={"image_id", "boxes", "labels", "iscrowd"})
        self.transforms = detection_transforms(train) if transforms is None else transforms

    def set_label_order(self, category_ids) -> None:
        """Label i (1..C) becomes category ``category_ids[i - 1]``, in the targets and in ``label_to_category``.

        Sorted ids at construction; an evaluation split takes its training split's through
        ``a2d2c.data.class_map.apply_class_map``, which names the categories that do not fit.
        A category this file does not define keeps its id as its name in ``classes``.
        """
        category_ids = [int(c) for c in category_ids]
        unlabelled = set(self.coco.getCatIds()) - set(category_ids)
        if unlabelled:  # its annotations would get label -1; apply_class_map reports it first
            raise ValueError(f"categories {sorted(unlabelled)} of {self.annotation_file} would have no label")
        self.category_ids = category_ids
        self.classes = [self.coco.cats[c]["name"] if c in self.coco.cats else str(c) for c in category_ids]
        self.label_to_category = (0, *category_ids)
        self._labels = torch.full((max(category_ids, default=0) + 1,), -1, dtype=torch.int64)
        self._labels[category_ids] = torch.arange(1, len(category_ids) + 1)

    def _check_annotations(self, annotation_file, image_ids) -> int:
        """The number of non-crowd boxes that have no area once clipped to their image; unknown categories fail."""
        degenerate = 0
        for image_id in image_ids:
            info = self.coco.imgs[image_id]
            annotations = [a for a in self.coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
            unknown = {a["category_id"] for a in annotations} - set(self.category_ids)
            if unknown:
                raise ConfigError(f"{annotation_file}: image {image_id} has annotations of category ids "
                                  f"{sorted(unknown)} missing from its 'categories' list")
            if annotations:
                xywh = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float64)
                xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
                degenerate += int((~_has_area(_clipped_xyxy(xyxy, info["height"], info["width"]))).sum())
        return degenerate

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def image_ids(self) -> list:
        return [self.dataset.ids[i] for i in self.indices]

    def aspect_ratios(self) -> list:
        """width / height of every image, from the JSON (for aspect-ratio grouping without decoding images)."""
        return [self.coco.imgs[i]["width"] / self.coco.imgs[i]["height"] for i in self.image_ids]

    def __getitem__(self, index: int):
        image, target = self.dataset[self.indices[index]]
        height, width = image.height, image.width
        boxes = target.get("boxes")
        if boxes is None:  # the v2 wrapper returns only the image id for an image without annotations
            boxes = torch.zeros((0, 4))
            labels = crowd = torch.zeros((0,), dtype=torch.int64)
        else:
            labels, crowd = target["labels"], torch.as_tensor(target["iscrowd"])
        boxes = _clipped_xyxy(boxes.as_subclass(torch.Tensor).float(), height, width)
        keep = _has_area(boxes) & (crowd == 0)
        target = {
            # Indexing drops the tv_tensor type; re-wrapped so the v2 transforms move the boxes with the image.
            "boxes": tv_tensors.BoundingBoxes(boxes[keep], format="XYXY", canvas_size=(height, width)),
            "labels": self._labels[labels[keep]],
            "image_id": int(target["image_id"]),
        }
        return self.transforms(image, target)


def find_detection_dataset(dataset) -> CocoDetectionDataset:
    """The CocoDetectionDataset under `dataset` (it may be wrapped in Subsets): the evaluator needs its ground truth."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if not isinstance(dataset, CocoDetectionDataset):
        raise ConfigError(f"detection needs a COCO-format dataset (a2d2c.data.coco.CocoDetectionDataset), "
                          f"got {type(dataset).__name__}; use dataset=coco or dataset=shapes")
    return dataset


def build_coco(root, split: str = "train", train: Optional[bool] = None,
               remove_images_without_annotations: Optional[bool] = None) -> CocoDetectionDataset:
    """COCO 2017 `split` from `root/{split}2017/` and `root/annotations/instances_{split}2017.json`.

    `train` (default: split == "train") selects the training transforms and the removal of
    images without annotations.
    """
    if split not in COCO_SPLITS:
        raise ConfigError(f"COCO detection has splits {', '.join(map(repr, COCO_SPLITS))} (the test split has no "
                          f"public annotations), not {split!r}")
    root = Path(root).expanduser()
    image_dir, annotation_file = root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"
    missing = next((p for p in (image_dir, annotation_file) if not p.exists()), None)
    if missing is not None:
        raise ConfigError(f"COCO 2017 not found: no {missing}; set dataset.root to a folder holding train2017/, "
                          f"val2017/ and annotations/instances_{{train,val}}2017.json (the 2017 train/val images "
                          f"and annotations from {COCO_DOWNLOAD})")
    return CocoDetectionDataset(image_dir, annotation_file, train=split == "train" if train is None else train,
                                remove_images_without_annotations=remove_images_without_annotations)
