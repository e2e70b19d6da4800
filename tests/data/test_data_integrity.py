"""Data integrity: one class map across splits, and one line for each bad data input (issue 10)."""
import importlib
import json
import logging
import sys

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import v2

import a2d2c.data
from a2d2c.data.class_map import apply_class_map, check_num_classes, dataset_class_map
from a2d2c.data.coco import CocoDetectionDataset
from a2d2c.data.digits import Digits
from a2d2c.data.gpu_decode import EncodedImageFolder, GpuImagePipeline, collate_encoded
from a2d2c.data.imagenet import build_imagenet
from a2d2c.data.resumable import PerSampleSeeded
from a2d2c.data.synthetic import SyntheticImages
from a2d2c.data.tolerant_folder import TolerantImageFolder
from a2d2c.engine.tasks.coco_eval import CocoEvaluator
from a2d2c.cli.overrides import exit_on_config_error
from a2d2c.errors import ConfigError, find_config_error

FOLDER_TYPES = {"cpu": TolerantImageFolder, "gpu": EncodedImageFolder}


def write_folder(root, classes, per_class=2):
    """An ImageFolder of JPEGs; the colour of an image encodes its class's position in `classes`."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (16, 16), (40 * c, 10 * i, 200)).save(root / name / f"{i}.jpg")
    return root


# ------------------------------------------------------------------ ImageFolder class maps
@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_a_val_split_missing_a_class_keeps_the_training_labels(tmp_path, decode, caplog):
    write_folder(tmp_path / "train", ["a", "b", "c"])
    write_folder(tmp_path / "val", ["a", "c"])
    train = build_imagenet(str(tmp_path), "train", decode=decode)
    val = build_imagenet(str(tmp_path), "val", decode=decode)
    # A model that is right on every image predicts the training label of the image's folder.
    predictions = [train.class_to_idx[path.split("/")[-2]] for path, _ in val.samples]
    top1 = sum(p == t for p, t in zip(predictions, val.targets)) / len(val)
    assert top1 == 0.5  # what the val split scored before its labels followed training's: 'c' was label 1 there

    class_map = dataset_class_map(PerSampleSeeded(train, seed=0))  # as the Trainer holds it
    assert class_map == ["a", "b", "c"] and json.loads(json.dumps(class_map)) == class_map
    with caplog.at_level(logging.WARNING):
        apply_class_map(val, class_map, str(tmp_path / "val"))
    assert val.targets == predictions == [0, 0, 2, 2]
    assert [label for _, label in val.samples] == [label for _, label in val.imgs] == val.targets
    assert val.classes == ["a", "b", "c"] and val.class_to_idx == {"a": 0, "b": 1, "c": 2}
    assert [int(val[i][1]) for i in range(len(val))] == [0, 0, 2, 2]  # __getitem__ reads the new labels
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "class folder 'b'" in warnings[0] and warnings[0].count(str(tmp_path / "val")) == 1


def test_a_val_class_the_training_split_lacks_is_one_line(tmp_path):
    train = TolerantImageFolder(str(write_folder(tmp_path / "train", ["a", "b"])))
    val = TolerantImageFolder(str(write_folder(tmp_path / "val", ["a", "b", "x"])))
    with pytest.raises(ConfigError, match=rf"^class folder 'x' of the imagenet val split \({tmp_path / 'val'}\) is "
                                          rf"not one of the 2 training classes \(a, b\): the model has no output for "
                                          rf"it; remove it") as error:
        apply_class_map(val, dataset_class_map(train), "the imagenet val split")  # as the Trainer names it
    assert "\n" not in str(error.value)


def test_class_maps_of_fixed_label_datasets_and_of_the_wrong_kind(tmp_path):
    assert dataset_class_map(SyntheticImages(size=4, num_classes=3)) is None
    assert dataset_class_map(Digits("test")) is None
    folder = TolerantImageFolder(str(write_folder(tmp_path / "f", ["a", "b"])))
    apply_class_map(folder, None, "anywhere")  # fixed labels: nothing to follow
    assert folder.targets == [0, 0, 1, 1]
    with pytest.raises(ConfigError, match=r"^the training class map \(18, 90\) does not fit TolerantImageFolder, "
                                          r"whose classes are class folder names"):
        apply_class_map(folder, [18, 90], "anywhere")
    coco = CocoDetectionDataset(*write_coco(tmp_path / "coco", "val", {18: "dog", 90: "toothbrush"}))
    with pytest.raises(ConfigError, match="does not fit CocoDetectionDataset, whose classes are COCO category ids"):
        apply_class_map(coco, ["a", "b"], "anywhere")
    with pytest.raises(ConfigError, match="the evaluation dataset SyntheticImages .* has fixed labels"):
        apply_class_map(SyntheticImages(size=4), ["a", "b"], "anywhere")


# ------------------------------------------------------------------------ COCO class maps
def write_coco(root, split, categories, images=None):
    """`images`: {image id: [(category id, [x, y, w, h]), ...]}; by default one box per category."""
    images = images or {i + 1: [(c, [2, 2, 10, 10])] for i, c in enumerate(categories)}
    (root / split).mkdir(parents=True)
    entries, annotations = [], []
    for image_id, boxes in images.items():
        Image.new("RGB", (32, 32), (image_id, 0, 0)).save(root / split / f"{image_id}.jpg")
        entries.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 32, "height": 32})
        annotations += [{"id": len(annotations) + 1, "image_id": image_id, "category_id": c, "bbox": box,
                         "area": float(box[2] * box[3]), "iscrowd": 0} for c, box in boxes]
    path = root / f"{split}.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations,
                                "categories": [{"id": c, "name": n} for c, n in categories.items()]}))
    return root / split, path


def test_a_coco_val_split_missing_a_category_is_scored_with_the_training_labels(tmp_path, caplog):
    train = CocoDetectionDataset(*write_coco(tmp_path, "train", {18: "dog", 44: "bottle", 90: "toothbrush"}))
    val = CocoDetectionDataset(*write_coco(tmp_path, "val", {18: "dog", 90: "toothbrush"}))
    # A model that finds every object, with the labels it was trained on (toothbrush = 3).
    train_label = {c: label for label, c in enumerate(train.label_to_category)}
    targets = [val[i][1] for i in range(len(val))]
    outputs = [{"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"])),
                "labels": torch.tensor([train_label[val.label_to_category[int(l)]] for l in t["labels"]])}
               for t in targets]
    with pytest.raises(IndexError):  # what evaluation did before: label 3 is past the val split's (0, 18, 90)
        CocoEvaluator(val.coco, val.label_to_category).update([t["image_id"] for t in targets], outputs)

    class_map = dataset_class_map(Subset(PerSampleSeeded(train, seed=0), [0, 1]))
    assert class_map == [18, 44, 90] and json.loads(json.dumps(class_map)) == class_map
    with caplog.at_level(logging.WARNING):
        apply_class_map(val, class_map, str(val.annotation_file))
    assert val.label_to_category == train.label_to_category == (0, 18, 44, 90)
    with pytest.raises(ValueError, match=r"categories \[90\] of .*val.json would have no label"):
        val.set_label_order([18, 44])  # what apply_class_map rules out with its ConfigError
    assert [val[i][1]["labels"].tolist() for i in range(len(val))] == [[1], [3]]  # dog, toothbrush: training's labels
    evaluator = CocoEvaluator(val.coco, val.label_to_category)
    evaluator.update([t["image_id"] for t in targets], outputs)
    assert evaluator.compute()["AP"] == pytest.approx(1.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "category id 44" in warnings[0] and str(val.annotation_file) in warnings[0]


def test_a_coco_val_category_the_training_split_lacks_is_one_line(tmp_path):
    # As many categories as training, so the labels would have lined up silently with the wrong ones.
    train = CocoDetectionDataset(*write_coco(tmp_path, "train", {18: "dog", 44: "bottle"}))
    val = CocoDetectionDataset(*write_coco(tmp_path, "val", {18: "dog", 7: "train"}))
    with pytest.raises(ConfigError, match=r"^category id 7 of .*val.json is not one of the 2 training classes "
                                          r"\(18, 44\): the model has no output for it"):
        apply_class_map(val, dataset_class_map(train), str(val.annotation_file))


# ----------------------------------------------------------------- more classes than outputs
def test_more_classes_than_model_outputs_is_one_line(tmp_path, caplog):
    folder = TolerantImageFolder(str(write_folder(tmp_path / "f", ["a", "b", "c"])))
    with pytest.raises(ConfigError, match=rf"^the train split has 3 classes \(class folders in {tmp_path / 'f'}\) "
                                          rf"but dataset.num_classes=2: 1 of them would have no model output; "
                                          rf"set dataset.num_classes=3$"):
        check_num_classes(PerSampleSeeded(folder, seed=0), 2, "train")
    coco = CocoDetectionDataset(*write_coco(tmp_path, "coco", {18: "dog", 44: "bottle"}))
    with pytest.raises(ConfigError, match=r"^the val split has 2 classes \(categories in .*coco.json\) .* "
                                          r"set dataset.num_classes=2$"):
        check_num_classes(coco, 1, "val")
    with pytest.raises(ConfigError, match="has 10 classes .* set dataset.num_classes=10"):
        check_num_classes(Digits("test"), 9, "test")
    check_num_classes(folder, 3, "train")
    check_num_classes(coco, 2, "val")  # detection counts categories without the background on both sides
    with caplog.at_level(logging.WARNING):
        check_num_classes(folder, 5, "train")
    assert "the train split has 3 classes" in caplog.text and "2 of them never get a label" in caplog.text


# ------------------------------------------------------------------------ bad image files
@pytest.fixture
def folder_with_a_text_file(tmp_path):
    write_folder(tmp_path / "data", ["a", "b"], per_class=1)
    (tmp_path / "data" / "a" / "1_text.jpg").write_text("not an image")
    return tmp_path / "data"


def test_a_bad_image_in_a_loader_worker_is_one_line(folder_with_a_text_file, capsys):
    dataset = TolerantImageFolder(str(folder_with_a_text_file), transform=v2.ToImage())
    loader = DataLoader(dataset, batch_size=1, num_workers=1)
    with pytest.raises(ConfigError) as raised:
        list(loader)
    error = find_config_error(raised.value)
    assert str(error).startswith(f"cannot read image {folder_with_a_text_file / 'a' / '1_text.jpg'} ")
    assert str(error).endswith("dataset.bad_images=skip to skip unreadable files (in DataLoader worker process 0)")
    assert "\n" not in str(error) and "Traceback" in error.worker_traceback
    with pytest.raises(SystemExit), exit_on_config_error():
        raise RuntimeError("while training") from error
    assert capsys.readouterr().err == f"error: {error}\n"
    # Other messages, and a re-raise of the same error (pickled with its message), stay as they are.
    assert str(ConfigError("a\nb")) == "a\nb" and str(ConfigError(*error.args)) == str(error)


@pytest.mark.parametrize("content, reason", [(b"", "the file is empty"),
                                             (None, r"not a JPEG: it starts with b'\\x89PNG")])
def test_a_file_the_device_cannot_decode_is_named_or_skipped(folder_with_a_text_file, content, reason):
    bad = folder_with_a_text_file / "a" / "1_text.jpg"
    if content is None:
        Image.new("RGB", (8, 8)).save(bad, format="PNG")
    else:
        bad.write_bytes(content)
    dataset = build_imagenet(str(folder_with_a_text_file.parent), "data", decode="gpu")
    assert isinstance(dataset, EncodedImageFolder)
    with pytest.raises(ConfigError, match=rf"^cannot read image {bad} \(NotAJpegError: {reason}"):
        dataset[1]
    skipping = build_imagenet(str(folder_with_a_text_file.parent), "data", decode="gpu", bad_images="skip")
    encoded, labels = collate_encoded([skipping[i] for i in range(len(skipping))])
    assert labels.tolist() == [0, 1, 1] and skipping.num_skipped == 1  # replaced by the next sample, b/0.jpg
    pipeline = GpuImagePipeline(train=False, image_size=8, resize_size=8)
    assert pipeline(encoded, torch.device("cpu")).shape == (3, 3, 8, 8)


def test_a_truncated_jpeg_fails_the_device_batch_with_one_line(folder_with_a_text_file):
    truncated = folder_with_a_text_file / "a" / "1_text.jpg"
    Image.new("RGB", (64, 64), (0, 200, 0)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])  # a valid header: the worker's check passes
    dataset = EncodedImageFolder(str(folder_with_a_text_file))
    encoded, _ = collate_encoded([dataset[i] for i in range(len(dataset))])
    with pytest.raises(ConfigError, match=r"^a JPEG in a batch of 3 failed to decode on cpu \(.*\); to name the "
                                          r"file, run with dataset.decode=cpu") as error:
        GpuImagePipeline(train=True, image_size=8)(encoded, torch.device("cpu"))
    assert "\n" not in str(error.value)


def test_an_empty_class_folder_is_named(tmp_path):
    write_folder(tmp_path / "data", ["a"])
    (tmp_path / "data" / "b").mkdir()
    (tmp_path / "data" / "c").mkdir()
    (tmp_path / "data" / "c" / "notes.txt").write_text("no image")
    with pytest.raises(ConfigError, match=rf"^class folders {tmp_path / 'data' / 'b'}, {tmp_path / 'data' / 'c'} "
                                          rf"hold no image file \(.jpg, .jpeg, .png"):
        TolerantImageFolder(str(tmp_path / "data"))
    with pytest.raises(ConfigError, match=rf"^cannot read an image folder at {tmp_path / 'nothing'} "):
        EncodedImageFolder(str(tmp_path / "nothing"))


@pytest.mark.parametrize("first", ["gpu_decode", "imagenet"])
def test_gpu_decode_and_imagenet_import_in_either_order(first, monkeypatch):
    # gpu_decode used to take its constants from imagenet, which imports gpu_decode. Fresh copies of
    # both are imported here; the originals come back after the test.
    for name in ("gpu_decode", "imagenet"):
        monkeypatch.delitem(sys.modules, f"a2d2c.data.{name}")
        monkeypatch.setattr(a2d2c.data, name, getattr(a2d2c.data, name))
    importlib.import_module(f"a2d2c.data.{first}")


# ------------------------------------------------------------------------- bad COCO files
@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_a_coco_json_without_a_key_is_one_line(tmp_path, key):
    image_dir, path = write_coco(tmp_path, "val", {18: "dog"})
    data = json.loads(path.read_text())
    del data[key]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=rf"^{path} has no '{key}'; a COCO instances file is a JSON object with "
                                          rf"lists 'images', 'annotations', 'categories' \(https://cocodataset"):
        CocoDetectionDataset(image_dir, path)


@pytest.mark.parametrize("text, problem", [("{not json", "is not valid JSON"), ("[]", "is not a JSON object"),
                                           ('{"images": [{"file_name": "1.jpg"}]}', "lacks a key")])
def test_a_coco_json_pycocotools_cannot_index_is_one_line(tmp_path, text, problem):
    image_dir, path = write_coco(tmp_path, "val", {18: "dog"})
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{path}:? .*{problem}"):
        CocoDetectionDataset(image_dir, path)


def test_annotations_of_unlisted_images_are_counted_and_warned(tmp_path, caplog):
    image_dir, path = write_coco(tmp_path, "val", {18: "dog"})
    data = json.loads(path.read_text())
    data["annotations"] += [{**data["annotations"][0], "id": 100 + i, "image_id": 999} for i in range(2)]
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        dataset = CocoDetectionDataset(image_dir, path)
    assert dataset.num_orphan_annotations == 2 and len(dataset) == 1
    assert f"{path}: 2 annotations refer to image ids missing from its 'images' list" in caplog.text
