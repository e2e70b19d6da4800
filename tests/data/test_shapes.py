"""The embedded `shapes` detection dataset: deterministic, valid COCO, a real multi-object task."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from a2d2c.data.coco import CocoDetectionDataset
from a2d2c.data.shapes import SHAPE_CLASSES, build_shapes, generate_shapes, prepare_shapes
from a2d2c.errors import ConfigError

SIZES = {"train": 40, "val": 8}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("shapes"), SIZES, image_size=128, seed=0)


def load_coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_same_seed_same_dataset_other_seed_another(generated, tmp_path):
    again = generate_shapes(tmp_path / "again", SIZES, image_size=128, seed=0)
    other = generate_shapes(tmp_path / "other", SIZES, image_size=128, seed=1)
    for split in SIZES:
        name = f"annotations/instances_{split}.json"
        assert (generated / name).read_bytes() == (again / name).read_bytes()
        assert (generated / name).read_bytes() != (other / name).read_bytes()
    for image in ("train/000000.jpg", "train/000039.jpg", "val/000007.jpg"):
        assert (generated / image).read_bytes() == (again / image).read_bytes()


def test_json_is_coco_and_boxes_lie_inside_their_images(generated):
    for split, count in SIZES.items():
        coco = load_coco(generated / "annotations" / f"instances_{split}.json")
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
        assert len(coco.getImgIds()) == count
        for ann in coco.loadAnns(coco.getAnnIds()):
            info = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and 0 <= x and x + w <= info["width"] and 0 <= y and y + h <= info["height"]
            assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0
        with Image.open(generated / split / coco.imgs[1]["file_name"]) as image:
            assert image.size == (coco.imgs[1]["width"], coco.imgs[1]["height"])


def test_several_objects_of_every_class_and_size_range(generated):
    coco = load_coco(generated / "annotations" / "instances_train.json")
    per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
    assert min(per_image) >= 1 and np.mean(per_image) >= 2.5 and max(per_image) >= 5
    anns = coco.loadAnns(coco.getAnnIds())
    assert {a["category_id"] for a in anns} == set(coco.getCatIds())
    areas = np.array([a["area"] for a in anns])
    # COCO's small / medium / large ranges all occur, so APs, APm and APl are all measured.
    assert (areas < 32 ** 2).any() and ((areas >= 32 ** 2) & (areas < 96 ** 2)).any() and (areas >= 96 ** 2).any()


def test_boxes_are_tight_around_the_drawn_object(generated):
    coco = load_coco(generated / "annotations" / "instances_val.json")
    anns = coco.loadAnns(coco.getAnnIds())
    for ann in anns:  # the box is the extent of the outline that was drawn, to the pixel
        x, y, w, h = ann["bbox"]
        outline = np.array(ann["segmentation"][0]).reshape(-1, 2)
        assert np.abs(outline.min(0) - [x, y]).max() <= 1 and np.abs(outline.max(0) - [x + w, y + h]).max() <= 1
    # In the pixels: objects are flat colours (plus noise), so the box's own border band is closer to the
    # object's colour than the ring just outside it. Squares and circles cover their box centre, where
    # the colour is read; triangles may not.
    for ann in (a for a in anns if a["category_id"] != SHAPE_CLASSES.index("triangle") + 1):
        pixels = np.asarray(Image.open(generated / "val" / coco.imgs[ann["image_id"]]["file_name"]), dtype=np.float32)
        x, y, w, h = map(int, ann["bbox"])
        colour = np.median(pixels[y + h // 2 - 1:y + h // 2 + 2, x + w // 2 - 1:x + w // 2 + 2].reshape(-1, 3), axis=0)
        distance = np.abs(pixels - colour).sum(-1)
        border, ring = np.zeros(distance.shape, bool), np.zeros(distance.shape, bool)
        border[y:y + h, x:x + w], border[y + 1:y + h - 1, x + 1:x + w - 1] = True, False
        ring[max(y - 1, 0):y + h + 1, max(x - 1, 0):x + w + 1], ring[y:y + h, x:x + w] = True, False
        assert distance[border].mean() < distance[ring].mean(), ann


def test_dataset_reads_the_cache_and_regenerates_it_when_missing(tmp_path):
    train = build_shapes(tmp_path, "train", num_train=6, num_val=3)
    val = build_shapes(tmp_path, "val", num_train=6, num_val=3)
    assert isinstance(train, CocoDetectionDataset) and (len(train), len(val)) == (6, 3)
    folder = prepare_shapes(tmp_path, num_train=6, num_val=3)
    stamp = (folder / "annotations" / "instances_train.json").stat().st_mtime_ns
    assert prepare_shapes(tmp_path, num_train=6, num_val=3) == folder
    assert (folder / "annotations" / "instances_train.json").stat().st_mtime_ns == stamp  # reused, not redrawn
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no staging folder left behind

    original = json.loads((folder / "annotations" / "instances_val.json").read_text())
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    folder.rmdir()
    build_shapes(tmp_path, "val", num_train=6, num_val=3)
    assert json.loads((folder / "annotations" / "instances_val.json").read_text()) == original


def test_samples_are_float_images_with_xyxy_boxes_and_contiguous_labels(generated):
    dataset = CocoDetectionDataset(generated / "val", generated / "annotations" / "instances_val.json", train=False)
    image, target = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 128, 128) and 0 <= image.min() and image.max() <= 1
    anns = dataset.coco.imgToAnns[target["image_id"]]
    expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    assert torch.equal(target["boxes"], expected)
    assert target["labels"].tolist() == [a["category_id"] for a in anns]  # ids 1..3 are already contiguous
    assert dataset.label_to_category == (0, 1, 2, 3)


def test_training_flips_move_the_boxes_with_the_image(generated):
    files = (generated / "train", generated / "annotations" / "instances_train.json")
    plain = CocoDetectionDataset(*files, train=False)[0]
    flips = CocoDetectionDataset(*files, train=True)
    torch.manual_seed(0)
    samples = [flips[0] for _ in range(12)]
    flipped = [s for s in samples if not torch.equal(s[0], plain[0])]
    assert 0 < len(flipped) < len(samples)
    for image, target in flipped:
        assert torch.equal(image, plain[0].flip(-1))
        mirrored = plain[1]["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([128, 0, 128, 0])
        assert torch.equal(target["boxes"], mirrored)


def test_bad_split_and_size_end_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match="splits 'train' and 'val'"):
        build_shapes(tmp_path, "test")
    with pytest.raises(ConfigError, match="image_size >= 32"):
        build_shapes(tmp_path, "train", image_size=8)
