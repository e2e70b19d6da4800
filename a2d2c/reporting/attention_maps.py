"""Pictures of what the dynamic convs' attention does, as plain RGB arrays (numpy/torch, no matplotlib).

Cheap enough for the Trainer to send a few to wandb at each evaluation; scripts/show_attention.py
draws the same tiles into labelled matplotlib figures (attention_figures.py). The input is what
``a2d2c.tracking.attention_stats.AttentionProbe(model, keep=N)`` keeps: the model's first N inputs,
each attention layer's N x K x P distributions over its K kernels and the layer's output size.

* Per-position layers (A2D2C, A2D2C+: P = H' x W' > 1) get one panel per image: the image, then
  per layer its dominant kernel map (the kernel's palette colour, dimmed by its probability: a
  dark pixel is a position that hesitates) and its normalised entropy map (white: weight spread
  evenly over the K kernels, black: all on one), both upsampled to the image (nearest).
* Per-sample layers (DyConv, CondConv, ODConv, and any layer whose output is 1 x 1: P = 1) get
  one panel per layer: a heat map of images (rows) x kernels (columns), white = probability 1.
"""
from __future__ import annotations

import colorsys
import difflib
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from a2d2c.errors import ConfigError
from a2d2c.tracking.attention_stats import normalised_entropy

# matplotlib's tab10, written out so that this module needs no matplotlib; kernel k is always PALETTE[k].
PALETTE_NAMES = ("blue", "orange", "green", "red", "purple", "brown", "pink", "grey", "olive", "cyan")
_TAB10 = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
MIN_TILE = 64  # pixels: an 8x8 digit is blown up (nearest) to at least this, so a panel reads at a glance
GAP = 2        # white pixels between tiles
HEAT_CELL = 16  # pixels per (image, kernel) cell of a per-sample heat map


def palette(k: int) -> np.ndarray:
    """K x 3 uint8 colours: tab10 for the first 10 kernels, then evenly spaced hues."""
    extra = [tuple(round(255 * c) for c in colorsys.hsv_to_rgb((i + 0.5) / (k - 10), 0.65, 0.9))
             for i in range(max(0, k - 10))]
    return np.array((list(_TAB10) + extra)[:k], dtype=np.uint8)


def kernel_names(k: int) -> str:
    """'kernels 0-3: blue, orange, green, red', for captions and legends."""
    names = [PALETTE_NAMES[i] if i < 10 else f"hue {i - 10}" for i in range(k)]
    return f"kernels 0-{k - 1}: {', '.join(names)}"


def is_per_position(example: torch.Tensor) -> bool:
    """example: N x K x P; a layer with one distribution per output position (P > 1)."""
    return example.shape[2] > 1


def default_layers(names: Sequence[str]) -> List[str]:
    """First, middle and last: the attention early, halfway and late in the network."""
    names = list(names)
    if not names:
        return []
    return list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]]))


def choose_layers(names: Sequence[str], layers: Optional[Sequence[str]]) -> List[str]:
    """`layers`, checked against `names`; None is the default choice."""
    if layers is None:
        return default_layers(names)
    for name in layers:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{name!r} is not an attention layer of this model; {hint}"
                              f"valid: {', '.join(names) or 'none (no conv of it mixes kernels)'}")
    return list(layers)


def display_images(images: torch.Tensor) -> np.ndarray:
    """N x C x H x W normalised inputs -> N x H x W x 3 uint8, stretched per image to its min..max
    (the dataset's normalisation is not in the checkpoint, and a stretch shows every image's contrast)."""
    x = images.detach().float().cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = x[:, :3]
    lo = x.amin((1, 2, 3), keepdim=True)
    span = (x.amax((1, 2, 3), keepdim=True) - lo).clamp_min(1e-12)
    return ((x - lo) / span * 255).round().byte().permute(0, 2, 3, 1).numpy()


def _position_maps(example: torch.Tensor, shape: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
    """N x K x P distributions -> N x K x H x W, each output position's distribution over the input
    pixels it came from (nearest: a block per position, no blending of neighbours' kernels)."""
    n, k, _ = example.shape
    maps = example.float().reshape(n, k, *shape)
    return F.interpolate(maps, size=size, mode="nearest")


def dominant_kernel_map(example: torch.Tensor, shape, size) -> np.ndarray:
    """N x H x W x 3 uint8: the colour of each position's most probable kernel times that probability."""
    maps = _position_maps(example, shape, size)
    confidence, kernel = maps.max(1)
    colours = torch.from_numpy(palette(example.shape[1]).astype(np.float32))[kernel]
    return (colours * confidence[..., None]).round().clamp(0, 255).byte().numpy()


def entropy_map(example: torch.Tensor, shape, size) -> np.ndarray:
    """N x H x W x 3 uint8 grey: each position's normalised entropy, 255 = even over the K kernels."""
    entropy = normalised_entropy(_position_maps(example, shape, size).double(), 1).clamp(0, 1)
    grey = (entropy * 255).round().byte()
    return grey[..., None].expand(*grey.shape, 3).numpy()


def _enlarge(tile: np.ndarray, factor: int) -> np.ndarray:
    return tile.repeat(factor, 0).repeat(factor, 1)


def _hstack(tiles: List[np.ndarray]) -> np.ndarray:
    gap = np.full((tiles[0].shape[0], GAP, 3), 255, np.uint8)
    parts = [tiles[0]]
    for tile in tiles[1:]:
        parts += [gap, tile]
    return np.concatenate(parts, 1)


def heat_map(example: torch.Tensor) -> np.ndarray:
    """N x K x 1 per-sample distributions -> (N * HEAT_CELL) x (K * HEAT_CELL) x 3 uint8 grey, white = 1."""
    p = example[:, :, 0].float().clamp(0, 1)
    grey = _enlarge((p * 255).round().byte().numpy(), HEAT_CELL)
    return np.repeat(grey[..., None], 3, 2)


def attention_panels(images, examples, shapes, layers=None) -> List[Tuple[str, np.ndarray]]:
    """[(caption, H x W x 3 uint8)]: one panel per image for the chosen per-position layers, one heat map
    per chosen per-sample layer. `layers` None: the first, middle and last attention layers."""
    chosen = choose_layers(list(examples), layers)
    spatial = [name for name in chosen if is_per_position(examples[name])]
    panels = []
    if spatial and images is not None and len(images):
        shown = display_images(images)
        n = min([len(shown)] + [len(examples[name]) for name in spatial])
        size = tuple(shown.shape[1:3])
        factor = max(1, math.ceil(MIN_TILE / min(size)))
        tiles = {name: (dominant_kernel_map(examples[name][:n], shapes[name], size),
                        entropy_map(examples[name][:n], shapes[name], size)) for name in spatial}
        legend = "; ".join(f"{name} ({kernel_names(examples[name].shape[1])})" for name in spatial)
        for i in range(n):
            row = [shown[i]] + [tile[i] for name in spatial for tile in tiles[name]]
            caption = (f"image {i}, then per layer: dominant kernel (colour; dark = unsure), normalised entropy "
                       f"(white = even over kernels): {legend}")
            panels.append((caption, _hstack([_enlarge(tile, factor) for tile in row])))
    for name in chosen:
        if name not in spatial:
            n, k = examples[name].shape[:2]
            panels.append((f"{name}: weight of each of its {k} kernels (columns) for {n} images (rows), "
                           f"white = 1", heat_map(examples[name])))
    return panels
