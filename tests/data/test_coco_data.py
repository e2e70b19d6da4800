"""COCO 2017 from its on-disk layout: missing data, images without annotations, bad boxes, aspect-ratio batches."""
import json

import pytest
from PIL import Image
from torch.utils.data import DataLoader, SequentialSampler, Subset

from a2d2c.data.aspect_ratio import (GroupedBatchSampler, build_grouped_train_loader, create_aspect_ratio_groups,
                                     dataset_aspect_ratios)
from a2d2c.data.coco import build_coco, detection_collate, find_detection_dataset
from a2d2c.distributed.process_group import DistInfo
from a2d2c.errors import ConfigError

# (width, height) per image id, and its annotations: (category id, [x, y, w, h], iscrowd)
IMAGES = {
    # a box of zero width; one that crosses the image border
    11: ((64, 48), [(18, [4, 4, 20, 10], 0), (90, [30, 20, 0, 8], 0), (18, [50, 30, 30, 30], 0)]),
    12: ((48, 64), []),  # no annotation at all
    13: ((64, 48), [(90, [10, 10, 1, 1], 0)]),  # only a box of 1 px: torchvision's references drop the image
    14: ((48, 64), [(90, [5, 6, 20, 30], 0), (18, [1, 2, 40, 40], 1), (18, [8, 8, -3, 5], 0)]),  # crowd; negative width
}


def write_coco(root, split="val"):
    """A COCO 2017 layout with categories 18 and 90 (COCO's ids are not contiguous)."""
    (root / f"{split}2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for image_id, ((width, height), anns) in IMAGES.items():
        Image.new("RGB", (width, height), (image_id * 10, 80, 160)).save(root / f"{split}2017" / f"{image_id:012d}.jpg")
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width, "height": height})
        for category, bbox, crowd in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": bbox, "area": float(abs(bbox[2] * bbox[3])), "iscrowd": crowd})
    categories = [{"id": 90, "name": "toothbrush"}, {"id": 18, "name": "dog"}]
    (root / "annotations" / f"instances_{split}2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def test_missing_dataset_ends_with_one_line_naming_path_layout_and_source(tmp_path):
    with pytest.raises(ConfigError) as error:
        build_coco(tmp_path / "nowhere", "val")
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "nowhere" / "val2017") in message
    assert "annotations/instances_{train,val}2017.json" in message and "cocodataset.org" in message
    write_coco(tmp_path / "coco")
    with pytest.raises(ConfigError, match="no .*/coco/train2017;"):
        build_coco(tmp_path / "coco", "train")  # val is there, train is not
    (tmp_path / "coco" / "train2017").mkdir()
    with pytest.raises(ConfigError, match="no .*/coco/annotations/instances_train2017.json;"):
        build_coco(tmp_path / "coco", "train")
    with pytest.raises(ConfigError, match="not 'test'"):
        build_coco(tmp_path / "coco", "test")


def test_evaluation_keeps_every_image_and_training_drops_those_without_usable_boxes(tmp_path):
    root = write_coco(tmp_path)
    evaluation = build_coco(root, "val")
    assert evaluation.image_ids == [11, 12, 13, 14] and evaluation.num_images_removed == 0
    training = build_coco(root, "val", train=True)
    assert training.image_ids == [11, 14] and training.num_images_removed == 2
    image, target = evaluation[1]  # image 12: no annotation, still a valid (empty) target
    assert image.shape == (3, 64, 48) and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["image_id"] == 12


def test_boxes_are_clipped_degenerate_ones_dropped_and_counted_crowds_left_to_the_evaluator(tmp_path):
    dataset = build_coco(write_coco(tmp_path), "val")
    assert dataset.classes == ["dog", "toothbrush"] and dataset.label_to_category == (0, 18, 90)
    # zero width (image 11), negative width (image 14); the 1-px box of image 13 has an area and stays
    assert dataset.num_degenerate_boxes == 2
    _, target = dataset[0]
    assert target["boxes"].tolist() == [[4, 4, 24, 14], [50, 30, 64, 48]]  # the second clipped to the 64x48 image
    assert target["labels"].tolist() == [1, 1]  # category 18 -> label 1
    _, target = dataset[3]
    assert target["boxes"].tolist() == [[5, 6, 25, 36]] and target["labels"].tolist() == [2]  # crowd not a target


def test_unknown_category_ends_with_one_line(tmp_path):
    root = write_coco(tmp_path)
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"category ids \[5\] missing from its 'categories'"):
        build_coco(root, "val")


@pytest.mark.parametrize("bbox", [[1, 2, 3], "10 10 5 5", [1, 2, "w", 4], [1, 2, float("nan"), 4], None])
def test_malformed_box_ends_with_one_line(tmp_path, bbox):
    root = write_coco(tmp_path)
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"][1]["bbox"] = bbox
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"annotation 2 of image 11 has bbox .*expected \[x, y, width, height\]"):
        build_coco(root, "val")


def test_collate_keeps_images_of_different_sizes_apart(tmp_path):
    dataset = build_coco(write_coco(tmp_path), "val")
    images, targets = next(iter(DataLoader(dataset, batch_size=4, collate_fn=detection_collate)))
    assert [tuple(i.shape[1:]) for i in images] == [(48, 64), (64, 48), (48, 64), (64, 48)]
    assert [t["image_id"] for t in targets] == [11, 12, 13, 14]
    assert find_detection_dataset(Subset(Subset(dataset, [1, 2]), [0])) is dataset


def test_aspect_ratio_groups_and_batches():
    ratios = [0.4, 0.75, 1.0, 1.33, 2.5, 0.75, 1.33, 1.0]
    groups = create_aspect_ratio_groups(ratios, k=3)
    assert groups[0] == 0 and groups[4] == 7  # the tails below 1/2 and above 2
    assert groups[1] == groups[5] < groups[2] == groups[7] < groups[3] == groups[6]
    sampler = GroupedBatchSampler(SequentialSampler(ratios), groups, batch_size=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert [1, 5] in batches and [2, 7] in batches and [3, 6] in batches  # same-group pairs
    assert len(list(GroupedBatchSampler(SequentialSampler(range(7)), [0, 1, 2, 3, 4, 5, 6], 3))) == 2  # remainder dropped


def test_grouped_loader_batches_landscape_and_portrait_images_apart(tmp_path):
    dataset = build_coco(write_coco(tmp_path), "val")
    assert dataset_aspect_ratios(Subset(dataset, [1, 0])) == [48 / 64, 64 / 48]
    loader = build_grouped_train_loader(dataset, 2, DistInfo(), seed=0, collate_fn=detection_collate)
    for epoch in range(3):
        loader.batch_sampler.set_epoch(epoch)
        batches = [sorted(t["image_id"] for t in targets) for _, targets in loader]
        assert sorted(batches) == [[11, 13], [12, 14]]  # 64x48 together, 48x64 together
