"""a2d2c/reporting/attention_maps.py and attention_figures.py on hand-made distributions: the pixels and
bars follow the numbers they draw."""
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from a2d2c.errors import ConfigError
from a2d2c.reporting.attention_figures import position_figure, sample_figure, summary_figure
from a2d2c.reporting.attention_maps import GAP, HEAT_CELL, MIN_TILE, attention_panels, display_images
from a2d2c.tracking.attention_stats import AttentionStats

# tab10's first colours, written out here so the test does not read the palette it checks.
BLUE, ORANGE, GREEN = (31, 119, 180), (255, 127, 14), (44, 160, 44)


def spatial_example():
    """2 images, K = 3 kernels, a 2 x 2 output: position (row, col) -> distribution over the kernels."""
    p = torch.zeros(2, 3, 2, 2)
    p[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])     # sure: kernel 0
    p[0, :, 0, 1] = torch.tensor([0.1, 0.1, 0.8])     # mostly kernel 2
    p[0, :, 1, 0] = torch.tensor([0.25, 0.5, 0.25])   # kernel 1, unsure
    p[0, :, 1, 1] = torch.full((3,), 1 / 3)           # even: kernel 0 wins the tie, at a third
    p[1] = p[0].flip(0)                               # image 1: kernels 2 and 0 swapped
    return p.reshape(2, 3, 4)


def tile_pixel(panel, tile, row, col, image_size=4, cells=2):
    """Centre pixel of output cell (row, col) of the tile-th tile of a per-position panel."""
    side = image_size * (MIN_TILE // image_size)  # the panel enlarges 4x4 tiles to 64x64
    step = side // cells
    x0 = tile * (side + GAP)
    return tuple(int(v) for v in panel[row * step + step // 2, x0 + col * step + step // 2])


def test_per_position_panel_colours_follow_the_dominant_kernel_and_its_probability():
    images = torch.randn(2, 1, 4, 4)
    panels = attention_panels(images, {"layer1.conv": spatial_example()}, {"layer1.conv": (2, 2)})
    assert len(panels) == 2  # one per image
    caption, panel = panels[0]
    assert panel.dtype == np.uint8 and panel.shape == (64, 3 * 64 + 2 * GAP, 3)
    assert "layer1.conv" in caption and "blue, orange, green" in caption
    assert tile_pixel(panel, 1, 0, 0) == BLUE
    assert tile_pixel(panel, 1, 0, 1) == tuple(round(0.8 * c) for c in GREEN)
    assert tile_pixel(panel, 1, 1, 0) == tuple(round(0.5 * c) for c in ORANGE)
    assert tile_pixel(panel, 1, 1, 1) == tuple(round(c / 3) for c in BLUE)
    # Normalised entropy in grey: 0 for a sure position, 1 (white) for an even one.
    assert tile_pixel(panel, 2, 0, 0) == (0, 0, 0) and tile_pixel(panel, 2, 1, 1) == (255, 255, 255)
    h = -(0.25 * np.log(0.25) * 2 + 0.5 * np.log(0.5)) / np.log(3)
    assert tile_pixel(panel, 2, 1, 0) == (round(255 * h),) * 3
    # Image 1 has kernels 0 and 2 swapped: its sure position is green.
    assert tile_pixel(panels[1][1], 1, 0, 0) == GREEN


def test_the_image_tile_is_the_input_stretched_to_its_range_in_grey():
    images = torch.arange(16.0).reshape(1, 1, 4, 4) * 3 - 7  # any range: shown as 0..255
    shown = display_images(images)
    assert shown.shape == (1, 4, 4, 3) and shown[0, 0, 0].tolist() == [0, 0, 0]
    assert shown[0, 3, 3].tolist() == [255, 255, 255] and shown[0, 1, 2].tolist() == [round(6 / 15 * 255)] * 3
    panel = attention_panels(images, {"a": spatial_example()[:1]}, {"a": (2, 2)})[0][1]
    assert panel[:16, :16].tolist() == [[[0, 0, 0]] * 16] * 16  # pixel (0, 0) enlarged 16x


def test_per_sample_layer_is_one_heat_map_of_images_by_kernels():
    p = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.0, 0.0, 0.0, 1.0]])[:, :, None]
    panels = attention_panels(torch.zeros(2, 3, 8, 8), {"conv": p}, {"conv": (4, 4)})
    assert len(panels) == 1
    caption, heat = panels[0]
    assert "conv" in caption and heat.shape == (2 * HEAT_CELL, 4 * HEAT_CELL, 3)
    for i in range(2):
        for k in range(4):
            cell = heat[i * HEAT_CELL:(i + 1) * HEAT_CELL, k * HEAT_CELL:(k + 1) * HEAT_CELL]
            assert (cell == round(255 * p[i, k, 0].item())).all(), (i, k)


def test_default_layers_are_first_middle_and_last_and_a_wrong_name_says_the_closest():
    names = [f"layer{i}.conv" for i in range(5)]
    examples = {name: torch.full((1, 2, 1), 0.5) for name in names}
    shapes = {name: (1, 1) for name in names}
    drawn = [caption.split(":")[0] for caption, _ in attention_panels(None, examples, shapes)]
    assert drawn == ["layer0.conv", "layer2.conv", "layer4.conv"]
    chosen = attention_panels(None, examples, shapes, layers=["layer3.conv"])
    assert [c.split(":")[0] for c, _ in chosen] == ["layer3.conv"]
    with pytest.raises(ConfigError, match=r"'layer3.cnv' is not an attention layer.*did you mean 'layer3.conv'"):
        attention_panels(None, examples, shapes, layers=["layer3.cnv"])


def test_summary_figure_draws_attention_stats_numbers():
    stats = AttentionStats({"early": SimpleNamespace(num_kernels=4), "late": SimpleNamespace(num_kernels=4)})
    torch.manual_seed(1)
    stats.update("early", torch.softmax(torch.randn(6, 4, 9), 1))
    collapsed = torch.zeros(6, 4, 1)
    collapsed[:, 2] = 1.0
    stats.update("late", collapsed)
    result = stats.result()
    fig = summary_figure(result)
    drawn = {c.get_label(): [bar.get_height() for bar in c.patches] for ax in fig.axes for c in ax.containers}
    for quantity in ("entropy", "balance", "kernels_90"):
        assert drawn[quantity] == pytest.approx([result[name][quantity] for name in ("early", "late")]), quantity
    assert drawn["balance"][1] == pytest.approx(0.0) and drawn["kernels_90"][1] == 1  # the collapsed layer
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["early", "late"]


def png_size(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.verify()
        return image.size


def test_figures_render_to_png():
    assert min(png_size(position_figure(torch.randn(2, 3, 4, 4), spatial_example(), (2, 2), "a"))) > 100
    assert min(png_size(sample_figure(torch.softmax(torch.randn(8, 4, 1), 1), "b"))) > 100
