"""One label per class across splits: the training split's class map, imposed on the evaluation split.

An ImageFolder numbers its classes by its own sorted folder names, and a COCO-format dataset its
categories by its own sorted ids. An evaluation split that lacks a class of the training split
(or has one more) therefore numbers the rest differently, and every prediction of a shifted class
counts as wrong, silently. ``dataset_class_map`` records the training split's map (plain data, for
checkpoints); ``apply_class_map`` relabels an evaluation split by it; ``check_num_classes`` catches
a dataset with more classes than the model has outputs. Typical use::

    class_map = dataset_class_map(train_set)
    check_num_classes(train_set, cfg.dataset.num_classes, "train")
    apply_class_map(eval_set, class_map, where)
"""
from __future__ import annotations

import logging
from typing import Optional

from torch.utils.data import Subset
from torchvision.datasets import DatasetFolder

from a2d2c.data.coco import CocoDetectionDataset
from a2d2c.data.resumable import PerSampleSeeded
from a2d2c.errors import ConfigError

log = logging.getLogger(__name__)

PREVIEW = 5  # class names a message lists before "..."


def _unwrap(dataset):
    """The dataset under Subset / PerSampleSeeded wrappers: the one that owns the labels."""
    while isinstance(dataset, (Subset, PerSampleSeeded)):
        dataset = dataset.dataset
    return dataset


def _preview(names, quote: bool = False) -> str:
    names = [repr(n) if quote else str(n) for n in names]
    shown = ", ".join(names[:PREVIEW])
    return shown + (f", ... ({len(names)} in all)" if len(names) > PREVIEW else "")


def dataset_class_map(dataset) -> Optional[list]:
    """The class identifiers of a training dataset, entry i for label i, as JSON-able plain data.

    ImageFolder-like datasets: the sorted class folder names. COCO-format detection: the category
    ids (ints) of labels 1..C (label 0 is the background, not listed). None for datasets whose
    labels are fixed by construction (digits, synthetic, CIFAR-100): nothing on disk can shift them.
    """
    dataset = _unwrap(dataset)
    if isinstance(dataset, DatasetFolder):
        return [str(name) for name in dataset.classes]
    if isinstance(dataset, CocoDetectionDataset):
        return [int(c) for c in dataset.category_ids]
    return None


def _check_kind(class_map, kind: type, dataset, what: str):
    # bool is an int subclass; a class map of True/False is no COCO map
    if not all(isinstance(entry, kind) and not isinstance(entry, bool) for entry in class_map):
        raise ConfigError(f"the training class map ({_preview(class_map)}) does not fit {type(dataset).__name__}, "
                          f"whose classes are {what}; the checkpoint or training split comes from another kind of "
                          f"dataset: evaluate it on the dataset it was trained on")


def apply_class_map(eval_dataset, class_map: Optional[list], source: str) -> None:
    """Relabel `eval_dataset` in place so label i is the class ``class_map[i]`` of the training split.

    `source` names the evaluation split in the messages (e.g. "the imagenet val split"); the
    dataset's root or annotation file is added where `source` does not hold it already.
    A training class the evaluation split lacks is a warning naming it (its accuracy or AP cannot
    be measured); an evaluation class the training split lacks is a ConfigError (the model has no
    output for it). `class_map` None (labels fixed by construction) changes nothing.
    """
    if class_map is None:
        return
    dataset = _unwrap(eval_dataset)
    if isinstance(dataset, DatasetFolder):
        _check_kind(class_map, str, dataset, "class folder names (strings)")
        _apply_to_folder(dataset, list(class_map), source)
    elif isinstance(dataset, CocoDetectionDataset):
        _check_kind(class_map, int, dataset, "COCO category ids (ints)")
        _apply_to_coco(dataset, [int(c) for c in class_map], source)
    else:
        raise ConfigError(f"the training split has a class map ({_preview(class_map)}) but the evaluation dataset "
                          f"{type(dataset).__name__} ({source}) has fixed labels; evaluate on the dataset the model "
                          f"was trained on")


def _missing_and_unknown(train_classes: list, eval_classes: list, source: str, location, what: str):
    location = str(location)
    source = source if location in source else f"{source} ({location})"  # the path, whatever `source` says
    known = set(train_classes)
    unknown = [c for c in eval_classes if c not in known]
    if unknown:
        one = len(unknown) == 1
        they = "it" if one else "them"
        raise ConfigError(f"{what} {_preview(unknown, quote=True)} of {source} {'is' if one else 'are'} not one of "
                          f"the {len(train_classes)} training classes ({_preview(train_classes)}): the model has no "
                          f"output for {they}; remove {they} from the evaluation split, or train with {they}")
    present = set(eval_classes)
    missing = [c for c in train_classes if c not in present]
    if missing:
        log.warning("%s has no %s %s (of the %d training classes): not evaluated there; the other classes keep "
                    "their training labels", source, what, _preview(missing, quote=True), len(train_classes))


def _apply_to_folder(dataset: DatasetFolder, class_map: list, source: str) -> None:
    _missing_and_unknown(class_map, list(dataset.classes), source, dataset.root, "class folder")
    position = {name: label for label, name in enumerate(class_map)}
    new_label = {old: position[name] for name, old in dataset.class_to_idx.items()}
    dataset.samples = [(path, new_label[label]) for path, label in dataset.samples]
    dataset.targets = [label for _, label in dataset.samples]
    if hasattr(dataset, "imgs"):  # ImageFolder's alias of samples
        dataset.imgs = dataset.samples
    dataset.classes = list(class_map)
    dataset.class_to_idx = {name: label for label, name in enumerate(class_map)}


def _apply_to_coco(dataset: CocoDetectionDataset, class_map: list, source: str) -> None:
    _missing_and_unknown(class_map, list(dataset.category_ids), source, dataset.annotation_file, "category id")
    dataset.set_label_order(class_map)


def _count_classes(dataset):
    """(number of classes, where they come from) of `dataset`, or None where it does not say."""
    if isinstance(dataset, CocoDetectionDataset):
        return len(dataset.category_ids), f"categories in {dataset.annotation_file}"
    if isinstance(dataset, DatasetFolder):
        return len(dataset.classes), f"class folders in {dataset.root}"
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, (list, tuple)):
        return len(classes), f"classes of {type(dataset).__name__}"
    count = getattr(dataset, "num_classes", None)
    if isinstance(count, int):
        return count, f"classes of {type(dataset).__name__}"
    return None


def check_num_classes(dataset, num_classes: int, split: str) -> None:
    """ConfigError when `dataset` has more classes than the model's `num_classes` outputs.

    For COCO-format detection both count object categories, without the background. Fewer classes
    than outputs is allowed (a subset of a larger label space) and logged as a warning.
    """
    dataset = _unwrap(dataset)
    counted = _count_classes(dataset)
    if counted is None:
        return
    count, where = counted
    if count > num_classes:
        raise ConfigError(f"the {split} split has {count} classes ({where}) but dataset.num_classes={num_classes}: "
                          f"{count - num_classes} of them would have no model output; set dataset.num_classes={count}")
    if count < num_classes:
        log.warning("the %s split has %d classes (%s) and the model %d outputs (dataset.num_classes); %d of them "
                    "never get a label", split, count, where, num_classes, num_classes - count)
