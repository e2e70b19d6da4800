"""`shapes`: the embedded detection dataset, generated in COCO format so it is read and scored like COCO.

Squares, circles and triangles of varied sizes (areas from about 10² to 109² px at 128 px, so
COCO's small, medium and large ranges all occur) and colours, 2 to 6 per image, on textured, noisy backgrounds. Object
colour never depends on the class, so a detector has to learn the outline. Nothing is
downloaded: the images (JPEG) and ``annotations/instances_{train,val}.json`` are drawn from a
fixed seed, once, into a cache folder named after the generation parameters, e.g.
``~/.cache/a2d2c/shapes/v1-seed0-128px-500-100/``. The same parameters give the same JSON and
pixels, so runs on different machines compare.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from a2d2c.data.coco import CocoDetectionDataset
from a2d2c.errors import ConfigError

log = logging.getLogger(__name__)

SHAPE_CLASSES = ("square", "circle", "triangle")
SPLITS = ("train", "val")
# Bumped whenever the drawing changes, so a cache from an older generator is never reused.
GENERATOR_VERSION = 1
SUPERSAMPLE = 4  # shapes are drawn at 4x and averaged down: anti-aliased edges, sub-pixel sizes
JPEG_QUALITY = 92


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "a2d2c" / "shapes"


def _circumradius(kind: str, scale: float) -> float:
    """Radius of the circle through the corners of a shape whose area is scale²."""
    if kind == "circle":
        return scale / math.sqrt(math.pi)
    if kind == "square":
        return scale / math.sqrt(2)
    return scale * math.sqrt(4 / (3 * math.sqrt(3)))  # equilateral triangle


def _outline(kind: str, cx: float, cy: float, radius: float, angle: float) -> list:
    """Vertices (x, y) of the shape centred at (cx, cy) with corners on a circle of `radius`."""
    if kind == "circle":
        corners, angle = 48, 0.0
    else:
        corners = 4 if kind == "square" else 3
    return [(cx + radius * math.cos(angle + 2 * math.pi * i / corners),
             cy + radius * math.sin(angle + 2 * math.pi * i / corners)) for i in range(corners)]


def _rasterize(points: list, height: int, width: int) -> Optional[tuple]:
    """Anti-aliased coverage of the polygon in a tight window: (alpha, x0, y0), or None if it is empty."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, y0 = max(int(math.floor(min(xs))), 0), max(int(math.floor(min(ys))), 0)
    x1, y1 = min(int(math.ceil(max(xs))) + 1, width), min(int(math.ceil(max(ys))) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    s = SUPERSAMPLE
    mask = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    ImageDraw.Draw(mask).polygon([((x - x0) * s, (y - y0) * s) for x, y in points], fill=255)
    alpha = np.asarray(mask, dtype=np.float32).reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3)) / 255.0
    return alpha, x0, y0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour field (a coarse noise grid upsampled) plus a linear gradient: H x W x 3 in [0, 1]."""
    cells = int(rng.integers(2, 7))
    coarse = rng.uniform(0.15, 0.85, (cells, cells, 3)).astype(np.float32)
    field = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
                       dtype=np.float32) / 255.0
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    direction = rng.uniform(-0.25, 0.25, 2)
    gradient = direction[0] * ramp[None, :, None] + direction[1] * ramp[:, None, None]
    return np.clip(field + gradient, 0.0, 1.0)


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A colour that differs clearly from the mean colour of the background beneath the object."""
    best, best_distance = None, -1.0
    for _ in range(16):
        colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        distance = float(np.abs(colour - under).sum())
        if distance > 0.9:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def _extent(points: list, margin: float = 0.0) -> tuple:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs) - margin, min(ys) - margin, max(xs) + margin, max(ys) + margin


def _place(rng: np.random.Generator, kind: str, radius: float, angle: float, image_size: int,
           placed_boxes: list, attempts: int = 25, shrink: float = 0.8, min_radius: float = 4.0):
    """The outline at a random position inside the image where it keeps 2 px clear of every placed box.

    An object that finds no room after `attempts` positions is shrunk and tried again, so that
    images keep several objects; None when even the smallest finds no room.
    """
    placed = np.asarray(placed_boxes, dtype=np.float64).reshape(-1, 4)
    while radius >= min_radius:
        x0, y0, x1, y1 = _extent(_outline(kind, 0.0, 0.0, radius, angle))
        if x1 - x0 < image_size - 1 and y1 - y0 < image_size - 1:
            cx = rng.uniform(-x0, image_size - x1, attempts)
            cy = rng.uniform(-y0, image_size - y1, attempts)
            boxes = np.stack([cx + x0 - 2, cy + y0 - 2, cx + x1 + 2, cy + y1 + 2], axis=1)
            apart = ((boxes[:, None, 2] <= placed[None, :, 0]) | (placed[None, :, 2] <= boxes[:, None, 0])
                     | (boxes[:, None, 3] <= placed[None, :, 1]) | (placed[None, :, 3] <= boxes[:, None, 1]))
            free = np.flatnonzero(apart.all(axis=1))
            if free.size:  # the first free candidate, as sequential rejection sampling would take
                return _outline(kind, float(cx[free[0]]), float(cy[free[0]]), radius, angle)
        radius *= shrink
    return None


def _draw_image(rng: np.random.Generator, image_size: int, min_objects: int, max_objects: int,
                min_scale: float, max_scale: float):
    """One image (H x W x 3 uint8) and its objects as (class index, polygon, alpha window)."""
    canvas = _background(rng, image_size)
    count = int(rng.integers(min_objects, max_objects + 1))
    # Log-uniform scales (square root of the area), largest placed first so the small ones fill the gaps.
    scales = sorted(np.exp(rng.uniform(math.log(min_scale), math.log(max_scale), count)), reverse=True)
    placed_boxes, objects = [], []
    for scale in scales:
        kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        # Squares stay roughly axis-aligned (tilted up to 15 degrees), triangles take any orientation.
        angle = rng.uniform(-0.26, 0.26) + math.pi / 4 if kind == "square" else rng.uniform(0, 2 * math.pi)
        points = _place(rng, kind, _circumradius(kind, scale), angle, image_size, placed_boxes)
        if points is None:
            continue  # no room left, even for a smaller one
        raster = _rasterize(points, image_size, image_size)
        if raster is None or not (raster[0] >= 0.5).any():
            continue  # too small to cover a single pixel
        alpha, x0, y0 = raster
        window = canvas[y0:y0 + alpha.shape[0], x0:x0 + alpha.shape[1]]
        colour = _contrasting_colour(rng, window.reshape(-1, 3).mean(0))
        window[...] = window * (1 - alpha[..., None]) + colour * alpha[..., None]
        placed_boxes.append(_extent(points, margin=2))
        objects.append((SHAPE_CLASSES.index(kind), points, raster))
    noise = rng.normal(0.0, 0.04, canvas.shape).astype(np.float32)
    pixels = (np.clip(canvas + noise, 0.0, 1.0) * 255).round().astype(np.uint8)
    return pixels, objects


def _annotation(kind: int, points: list, raster: tuple, image_id: int, annotation_id: int) -> dict:
    # The box and area are those of the pixels the object covers (coverage >= 1/2), as COCO's
    # come from its masks; the polygon is kept as the segmentation.
    alpha, x0, y0 = raster
    rows, cols = np.nonzero(alpha >= 0.5)
    x, y = x0 + int(cols.min()), y0 + int(rows.min())
    w, h = int(cols.max() - cols.min()) + 1, int(rows.max() - rows.min()) + 1
    return {"id": annotation_id, "image_id": image_id, "category_id": kind + 1,
            "bbox": [float(x), float(y), float(w), float(h)], "area": float(len(rows)), "iscrowd": 0,
            "segmentation": [[round(float(c), 2) for p in points for c in p]]}


def generate_shapes(directory, num_images: dict, image_size: int = 128, seed: int = 0,
                    min_objects: int = 2, max_objects: int = 6) -> Path:
    """Write ``<split>/*.jpg`` and ``annotations/instances_<split>.json`` for each split into `directory`.

    Every image has its own random stream, seeded by (seed, split, index): the splits are
    disjoint draws and an image does not depend on how many come before it.
    """
    directory = Path(directory)
    # Object scales from 8% to 85% of the image side: for 128 px, 10 to 109 px, so COCO's small
    # (< 32²), medium and large (> 96²) area ranges all have objects.
    min_scale, max_scale = 0.08 * image_size, 0.85 * image_size
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)]
    (directory / "annotations").mkdir(parents=True, exist_ok=True)
    for split_index, split in enumerate(SPLITS):
        (directory / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for index in range(num_images[split]):
            rng = np.random.default_rng([seed, split_index, index])
            pixels, objects = _draw_image(rng, image_size, min_objects, max_objects, min_scale, max_scale)
            image_id, file_name = index + 1, f"{index:06d}.jpg"
            Image.fromarray(pixels).save(directory / split / file_name, quality=JPEG_QUALITY)
            images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
            for kind, points, raster in objects:
                annotations.append(_annotation(kind, points, raster, image_id, len(annotations) + 1))
        info = {"description": "a2d2c shapes: generated geometric shapes for detection",
                "version": GENERATOR_VERSION, "seed": seed, "image_size": image_size, "split": split}
        with open(directory / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump({"info": info, "images": images, "annotations": annotations, "categories": categories}, f)
    return directory


def prepare_shapes(root=None, num_train: int = 500, num_val: int = 100, image_size: int = 128, seed: int = 0) -> Path:
    """The folder holding the dataset for these parameters, generated first if it is not there yet.

    Generated into a temporary folder and renamed into place, so concurrent processes (DDP
    ranks) or an interrupted run never leave a half-written dataset behind.
    """
    if min(num_train, num_val) < 1 or image_size < 32:
        raise ConfigError(f"shapes needs num_train, num_val >= 1 and image_size >= 32, got "
                          f"num_train={num_train}, num_val={num_val}, image_size={image_size}")
    root = Path(root).expanduser() if root else default_cache_root()
    folder = root / f"v{GENERATOR_VERSION}-seed{seed}-{image_size}px-{num_train}-{num_val}"
    if (folder / "annotations" / "instances_val.json").is_file():
        return folder
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".generating-", dir=root))
    except OSError as e:
        raise ConfigError(f"cannot create the shapes cache under {root} ({e.strerror}); "
                          f"set dataset.root to a writable folder") from e
    log.info("generating the shapes dataset (%d train + %d val images) into %s", num_train, num_val, folder)
    try:
        generate_shapes(staging, {"train": num_train, "val": num_val}, image_size, seed)
        os.replace(staging, folder)
    except OSError:
        if not (folder / "annotations" / "instances_val.json").is_file():
            raise
        # another process finished the same (deterministic) dataset first
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def build_shapes(root=None, split: str = "train", num_train: int = 500, num_val: int = 100, image_size: int = 128,
                 seed: int = 0, train: Optional[bool] = None) -> CocoDetectionDataset:
    """The `split` ("train" or "val") of the shapes dataset, read like COCO (see ``CocoDetectionDataset``).

    `train` (default: split == "train") selects the training transforms and drops images
    without objects, as for COCO.
    """
    if split not in SPLITS:
        raise ConfigError(f"shapes has splits 'train' and 'val', not {split!r}")
    folder = prepare_shapes(root, num_train, num_val, image_size, seed)
    return CocoDetectionDataset(folder / split, folder / "annotations" / f"instances_{split}.json",
                                train=split == "train" if train is None else train)
