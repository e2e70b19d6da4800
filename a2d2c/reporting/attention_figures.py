"""Labelled matplotlib figures of the attention, for scripts/show_attention.py.

The per-position tiles are attention_maps.py's, so a figure and a wandb panel show the same colours.
Figures are built with ``matplotlib.figure.Figure`` (no pyplot): no GUI backend, no global state.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from a2d2c.reporting.attention_maps import display_images, dominant_kernel_map, entropy_map, palette

SUMMARY_BARS = ("entropy", "balance")  # the quantities of AttentionStats.result() drawn as bars, per layer


def position_figure(images: torch.Tensor, example: torch.Tensor, shape, layer: str) -> Figure:
    """Rows: the images, the layer's dominant kernel per position, its normalised entropy; one column per image."""
    shown = display_images(images)
    n = min(len(shown), len(example))
    size = tuple(shown.shape[1:3])
    rows = (("input", shown[:n]),
            ("dominant kernel\n(dark = unsure)", dominant_kernel_map(example[:n], shape, size)),
            ("normalised entropy\n(white = even)", entropy_map(example[:n], shape, size)))
    fig = Figure(figsize=(1.1 * n + 1.2, 3.9), layout="constrained")
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (label, tiles) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(tiles[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=8)
    k = example.shape[1]
    colours = palette(k) / 255.0
    fig.legend(handles=[Patch(color=colours[j], label=f"kernel {j}") for j in range(k)], loc="outside lower center",
               ncol=min(k, 8), fontsize=8, frameon=False)
    fig.suptitle(f"{layer}: attention over {k} kernels at each of its {shape[0]}x{shape[1]} output positions",
                 fontsize=9)
    return fig


def sample_figure(example: torch.Tensor, layer: str) -> Figure:
    """Heat map of a per-sample layer's kernel weights: images (rows) x kernels (columns), numbers in the cells."""
    p = example[:, :, 0].float().numpy()
    n, k = p.shape
    fig = Figure(figsize=(0.5 * k + 2.0, 0.3 * n + 1.4), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(p, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    if n * k <= 256:  # numbers stay legible
        for i in range(n):
            for j in range(k):
                ax.text(j, i, f"{p[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if p[i, j] > 0.6 else "white")
    ax.set_xticks(range(k))
    ax.set_yticks(range(n))
    ax.set_xlabel("kernel")
    ax.set_ylabel("image")
    ax.set_title(f"{layer}: kernel weights per image", fontsize=9)
    fig.colorbar(image, ax=ax, label="weight")
    return fig


def summary_figure(result: Dict[str, dict], title: str = "") -> Figure:
    """From AttentionStats.result(): per layer, the mean normalised entropy and the balance (normalised
    entropy of the mean usage); and how many kernels carry 90% of the usage, against K."""
    names = list(result)
    x = np.arange(len(names))
    fig = Figure(figsize=(max(6.0, 0.35 * len(names) + 2.0), 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    width = 0.4
    for offset, quantity in zip((-width / 2, width / 2), SUMMARY_BARS):
        top.bar(x + offset, [result[name][quantity] for name in names], width, label=quantity)
    top.set_ylim(0, 1.3)  # headroom: the legend sits above the bars, not on them
    top.set_ylabel("normalised entropy")
    top.legend(fontsize=8, title="1 = even over kernels, 0 = one kernel", title_fontsize=8, loc="upper center", ncol=2)
    bottom.bar(x, [result[name]["kernels_90"] for name in names], 0.6, label="kernels_90", color="tab:green")
    bottom.plot(x, [len(result[name]["usage"]) for name in names], "k_", markersize=12, label="K")
    bottom.set_ylim(0, 1.3 * max(len(result[name]["usage"]) for name in names) if names else 1)
    bottom.set_ylabel("kernels carrying 90%")
    bottom.legend(fontsize=8, loc="upper center", ncol=2)
    bottom.set_xticks(x, names, rotation=90, fontsize=7)
    fig.suptitle(title or "attention per layer", fontsize=9)
    return fig

