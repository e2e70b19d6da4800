"""scripts/show_attention.py on checkpoints of one-epoch runs on synthetic images: its PNGs for every conv type with
attention, and one line for what it cannot draw."""
import argparse
import importlib.util

import pytest
import torch
from PIL import Image

from a2d2c.engine.trainer import Trainer
from a2d2c.layers import CONV_TYPES
from helpers.cli import assert_one_line_error
from helpers.paths import REPO
from helpers.train_utils import QUIET, TINY, compose_config, run_script

SCRIPT = REPO / "scripts" / "show_attention.py"
PER_POSITION = ("a2d2c", "a2d2c_plus")  # one distribution per output position; the others, one per sample
# MobileNetV2 x0.35 on 32 synthetic 8x8 images: one epoch of every conv type in about a second on a CPU,
# with per-position layers at 8x8, 4x4 and 2x2 (the README's picture is of the default digits run).
RUN = (*QUIET, *TINY, "trainer.epochs=1")


def load_script():
    spec = importlib.util.spec_from_file_location("show_attention", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """conv type -> the best.pt of its one-epoch digits run, trained when first asked for."""
    root, made = tmp_path_factory.mktemp("attention_runs"), {}

    def checkpoint(conv):
        if conv not in made:
            Trainer(compose_config(*RUN, f"conv={conv}"), root / conv).fit()
            made[conv] = root / conv / "checkpoints" / "best.pt"
        return made[conv]
    return checkpoint


def png_size(path):
    with Image.open(path) as image:
        image.verify()  # a truncated or foreign file fails here
        assert image.format == "PNG"
        return image.size


@pytest.mark.parametrize("conv", [c for c in CONV_TYPES if c != "static"])
def test_writes_maps_or_heat_maps_and_the_summary_for_every_conv_type_with_attention(conv, runs, capsys):
    checkpoint = runs(conv)
    assert load_script().main([str(checkpoint), "--images", "3", "--device", "cpu"]) == 0
    out = checkpoint.parent.parent / "attention"  # default: <run dir>/attention/
    written = sorted(out.glob("*.png"))
    printed = capsys.readouterr().out.splitlines()
    assert sorted(printed) == [f"wrote {path}" for path in written]  # one line per file
    state = torch.load(checkpoint, weights_only=True)
    assert state["config"]["conv"]["type"] == conv
    names = {p.stem.split("_", 1)[1] for p in written if p.stem != "summary"}
    assert len(names) == 3  # first, middle and last attention layers
    positions = [p for p in written if p.stem.startswith("positions_")]
    kernels = [p for p in written if p.stem.startswith("kernels_")]
    if conv in PER_POSITION:
        assert positions, written  # at least the first layer's output is more than 1x1
    else:
        assert not positions and len(kernels) == 3
    # Sizes at dpi 100 from the figure sizes: 3 images x (3 rows), 3 images x 4 kernels, the summary.
    assert all(png_size(p) == (450, 390) for p in positions)
    assert all(png_size(p) == (400, 230) for p in kernels)
    assert png_size(out / "summary.png")[1] == 600


def test_chosen_layers_only_and_the_out_folder(runs, tmp_path, capsys):
    script = load_script()
    assert script.main([str(runs("a2d2c")), "--layers", "features.1.conv.0.0", "--out", str(tmp_path / "pics"),
                        "--images", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == ["positions_features.1.conv.0.0.png",
                                                                     "summary.png"]
    assert png_size(tmp_path / "pics" / "positions_features.1.conv.0.0.png") == (340, 390)


def one_line_error(script, argv, capsys, *fragments):
    """In-process `main(argv)`: exit code 2, one `error:` line on stderr with the fragments, nothing on stdout."""
    assert script.main([str(a) for a in argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and not captured.out, captured.err
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    return lines[0]


def test_a_static_model_is_one_line_saying_there_is_nothing_to_show(runs, tmp_path, capsys):
    assert load_script().main([str(runs("static")), "--out", str(tmp_path / "pics")]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and len(captured.out.splitlines()) == 1 and "no attention to show" in captured.out
    assert not (tmp_path / "pics").exists()


def test_a_wrong_layer_name_is_one_line_with_the_closest_and_the_valid_ones(runs, tmp_path, capsys):
    line = one_line_error(load_script(), [runs("a2d2c"), "--layers", "features.1.conv.0", "--out", tmp_path], capsys,
                          "'features.1.conv.0' is not an attention layer", "did you mean", "features.1.conv.0.0")
    assert "valid: features.1.conv.0.0, " in line and not list(tmp_path.iterdir())  # nothing written


def test_an_unsafe_checkpoint_is_one_line_and_never_unpickled(tmp_path, capsys):
    crafted = tmp_path / "crafted.pt"
    torch.save({"model": {}, "config": {}, "payload": argparse.Namespace(ran=True)}, crafted)
    one_line_error(load_script(), [crafted], capsys, "refusing to load", "could run code")


def test_a_missing_checkpoint_is_one_line_from_the_command(tmp_path):
    # as a user runs it: the process prints one line and nothing else (no traceback, no warnings)
    assert_one_line_error(run_script(str(SCRIPT), tmp_path / "none.pt"), "checkpoint not found", "none.pt")
