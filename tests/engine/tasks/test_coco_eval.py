"""COCO bbox evaluation through the project's evaluator: known scores, empty input, de-duplication, DDP."""
import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.coco import COCO
from torch.utils.data import DistributedSampler

from a2d2c.engine.tasks.coco_eval import COCO_METRICS, CocoEvaluator, detections_to_coco, evaluate_coco, merge_detections

# Category ids as COCO has them: not contiguous, not starting at 1.
CATEGORY_IDS = (3, 7)
# Per image: (category id, x, y, w, h). Areas cover COCO's small (< 32²), medium and large (> 96²) ranges.
OBJECTS = {
    1: [(3, 10, 10, 20, 20), (7, 100, 40, 60, 50)],
    2: [(7, 5, 5, 120, 110), (3, 150, 150, 16, 24)],
    3: [(3, 40, 60, 40, 40)],
    4: [(7, 20, 30, 12, 10), (3, 60, 70, 110, 100), (7, 190, 10, 30, 60)],
    5: [],  # an image without objects: only false positives can happen there
}


def make_ground_truth() -> COCO:
    images = [{"id": i, "width": 256, "height": 256, "file_name": f"{i}.jpg"} for i in OBJECTS]
    objects = [(i, *o) for i, image_objects in OBJECTS.items() for o in image_objects]
    annotations = [{"id": n + 1, "image_id": i, "category_id": c, "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0}
                   for n, (i, c, x, y, w, h) in enumerate(objects)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def ground_truth_results(shift=(0.0, 0.0), keep=lambda image_id, n: True):
    """The ground truth as COCO results (score 1), each box moved by `shift` times its (w, h)."""
    return [{"image_id": i, "category_id": c, "bbox": [x + shift[0] * w, y + shift[1] * h, w, h], "score": 1.0}
            for i, objects in OBJECTS.items() for n, (c, x, y, w, h) in enumerate(objects) if keep(i, n)]


def test_ground_truth_given_back_scores_one_on_every_metric():
    metrics = evaluate_coco(make_ground_truth(), ground_truth_results())
    assert set(metrics) == set(COCO_METRICS)
    assert all(metrics[name] == pytest.approx(1.0) for name in COCO_METRICS), metrics


@pytest.mark.parametrize("empty", [[], np.zeros((0, 7))], ids=["list", "array"])
def test_no_prediction_scores_zero(empty):
    # pycocotools' own loadRes cannot even load an empty result list.
    assert evaluate_coco(make_ground_truth(), empty) == {name: 0.0 for name in COCO_METRICS}


def test_boxes_shifted_by_half_their_size_overlap_too_little_for_any_iou_threshold():
    # Moved by half its width, a box keeps IoU (w/2) / (3w/2) = 1/3 with its object: below 0.5, COCO's lowest threshold.
    metrics = evaluate_coco(make_ground_truth(), ground_truth_results(shift=(0.5, 0.0)))
    assert metrics == {name: 0.0 for name in COCO_METRICS}


def test_half_the_boxes_shifted_by_half_their_size_score_strictly_between():
    shifted_odd = ground_truth_results(shift=(0.5, 0.5), keep=lambda i, n: (i + n) % 2 == 1)
    exact_even = ground_truth_results(keep=lambda i, n: (i + n) % 2 == 0)
    metrics = evaluate_coco(make_ground_truth(), shifted_odd + exact_even)
    assert 0.0 < metrics["AP"] < 1.0 and 0.0 < metrics["AP50"] < 1.0


def test_partial_overlap_is_matched_only_at_the_thresholds_its_iou_reaches():
    # Moved by a fifth of its width: IoU = 0.8w / 1.2w = 2/3, a match at IoU 0.50, 0.55, 0.60 and 0.65 out of
    # COCO's ten thresholds 0.50:0.05:0.95, so AP = 4/10, AP50 = 1 and AP75 = 0.
    metrics = evaluate_coco(make_ground_truth(), ground_truth_results(shift=(0.2, 0.0)))
    assert metrics["AP"] == pytest.approx(0.4)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == 0.0


def test_an_area_range_without_ground_truth_has_no_ap():
    coco = make_ground_truth()
    small_only = [r for r in ground_truth_results() if r["bbox"][2] * r["bbox"][3] < 32 ** 2]
    metrics = evaluate_coco(coco, small_only, image_ids=[1])  # image 1 has a small and a medium object
    assert metrics["APs"] == pytest.approx(1.0) and metrics["APm"] == 0.0 and math.isnan(metrics["APl"])


def model_outputs(image_ids, label_of_category, shift=0.0):
    """What a detector returns for these images: xyxy boxes, scores and contiguous labels (1..C)."""
    outputs = []
    for i in image_ids:
        boxes = [[x + shift * w, y, x + shift * w + w, y + h] for _, x, y, w, h in OBJECTS[i]]
        outputs.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.linspace(0.9, 0.5, len(boxes)),
                        "labels": torch.tensor([label_of_category[c] for c, *_ in OBJECTS[i]], dtype=torch.int64)})
    return outputs


def test_evaluator_maps_model_labels_to_category_ids_and_xyxy_to_xywh():
    label_to_category = (0, *CATEGORY_IDS)
    evaluator = CocoEvaluator(make_ground_truth(), label_to_category)
    evaluator.update(list(OBJECTS), model_outputs(OBJECTS, {c: label for label, c in enumerate(label_to_category)}))
    metrics = evaluator.compute()
    assert metrics["samples"] == len(OBJECTS)
    assert all(metrics[name] == pytest.approx(1.0) for name in COCO_METRICS), metrics
    rows = detections_to_coco(7, torch.tensor([[1.0, 2.0, 11.0, 22.0]]), torch.tensor([0.5]), torch.tensor([2]),
                              label_to_category)
    assert rows.tolist() == [[7, 1.0, 2.0, 10.0, 20.0, 0.5, 7]]
    background = detections_to_coco(7, torch.ones(2, 4), torch.ones(2), torch.tensor([0, 1]), label_to_category)
    assert background[:, 6].tolist() == [3]  # label 0 is the background, not a detection


def imperfect_outputs(image_ids):
    """Detections with misses, shifted boxes and false positives, so that counting an image twice changes the score."""
    outputs = model_outputs(image_ids, {3: 1, 7: 2}, shift=0.15)
    for image_id, output in zip(image_ids, outputs):
        if image_id % 2:  # a confident false positive
            output["boxes"] = torch.cat([output["boxes"], torch.tensor([[200.0, 200.0, 250.0, 250.0]])])
            output["scores"] = torch.cat([output["scores"], torch.tensor([0.95])])
            output["labels"] = torch.cat([output["labels"], torch.tensor([1])])
    return outputs


def test_predictions_seen_twice_score_as_once(monkeypatch):
    coco, image_ids = make_ground_truth(), list(OBJECTS)
    once = CocoEvaluator(coco, (0, *CATEGORY_IDS))
    once.update(image_ids, imperfect_outputs(image_ids))
    expected = once.compute()
    assert 0.0 < expected["AP"] < 1.0

    # Two ranks that evaluated the same images (a padded sampler), and one rank that saw an image twice.
    monkeypatch.setattr("a2d2c.engine.tasks.coco_eval.all_gather_object", lambda obj: [obj, obj])
    twice = CocoEvaluator(coco, (0, *CATEGORY_IDS))
    twice.update(image_ids, imperfect_outputs(image_ids))
    twice.update(image_ids[:2], imperfect_outputs(image_ids[:2]))
    assert twice.compute() == expected

    # Without the de-duplication the duplicates would be false positives: the check above can fail.
    doubled = np.concatenate([*once.detections.values(), *once.detections.values()])
    assert evaluate_coco(coco, doubled, image_ids)["AP"] < expected["AP"]
    assert merge_detections([once.detections, once.detections]).keys() == once.detections.keys()


def _evaluate_on_rank(rank, world_size, store_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world_size)
    try:
        image_ids = list(OBJECTS)  # 5 images over 2 ranks: the sampler pads rank 1 with a repeat of image 1
        sampler = DistributedSampler(image_ids, num_replicas=world_size, rank=rank, shuffle=False)
        mine = [image_ids[i] for i in sampler]
        evaluator = CocoEvaluator(make_ground_truth(), (0, *CATEGORY_IDS))
        for start in range(0, len(mine), 2):  # in batches, as a loader gives them
            batch = mine[start:start + 2]
            evaluator.update(batch, imperfect_outputs(batch))
        metrics = evaluator.compute()
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump({"images": mine, "metrics": metrics}, f)
    finally:
        dist.destroy_process_group()


def test_ddp_gathers_and_deduplicates_to_the_single_process_score(tmp_path):
    mp.spawn(_evaluate_on_rank, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    seen = ranks[0]["images"] + ranks[1]["images"]
    assert len(seen) == 6 and set(seen) == set(OBJECTS)  # the padding really evaluated an image twice

    single = CocoEvaluator(make_ground_truth(), (0, *CATEGORY_IDS))
    single.update(list(OBJECTS), imperfect_outputs(list(OBJECTS)))
    expected = single.compute()
    assert 0.0 < expected["AP"] < 1.0
    assert ranks[0]["metrics"] == ranks[1]["metrics"] == expected
