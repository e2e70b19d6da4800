"""The bad-input catalogue: each mistake a user can make ends with one clear line (README "Fault tolerance").

Covered elsewhere, not repeated here: unknown group choices (test_cli.py), a missing CIFAR-100
root (test_cli.py), a checkpoint of another model or class count (test_cli.py), degenerate COCO
boxes and unknown COCO categories (test_coco_data.py), a damaged checkpoint and a full disk
while saving (test_fault_tolerance.py).
"""
import logging

import pytest
from PIL import Image

from a2d2c.data.imagenet import build_imagenet
from a2d2c.data.tolerant_folder import TolerantImageFolder
from a2d2c.cli.overrides import RENAMED_PRESETS, check_group_choices
from a2d2c.layers import CONV_TYPES, create_conv2d
from a2d2c.errors import ConfigError
from helpers.cli import assert_one_line_error
from helpers.train_utils import CONFIG_DIR, QUIET, TINY, compose_config, run_script


# ----------------------------------------------------------------------------- config typos
@pytest.mark.parametrize("override, fragments", [
    ("trainer.epoch=3", ("unknown config key 'trainer.epoch'", "did you mean 'trainer.epochs'?", "+trainer.epoch=")),
    ("trainer.ema.decayy=0.9", ("unknown config key 'trainer.ema.decayy'", "did you mean 'trainer.ema.decay'?")),
    ("datset.image_size=8", ("unknown config key 'datset.image_size'", "did you mean 'dataset'?")),
    ("conv=dinamic", ("unknown conv 'dinamic'", "did you mean 'dynamic'?")),
])
def test_a_typo_in_a_key_or_choice_names_the_nearest_valid_one(override, fragments, tmp_path):
    # Keys that exist only under a chosen group (dataset.root with dataset=cifar100) pass: test_cli.py's
    # missing-dataset test goes through this check.
    assert_one_line_error(run_script("train.py", override, f"hydra.run.dir={tmp_path}"), *fragments)


def test_a_typo_in_an_eval_key_names_the_nearest_valid_one(tmp_path):
    proc = run_script("eval.py", "checkpont=run/best.pt", f"hydra.run.dir={tmp_path}")
    assert_one_line_error(proc, "unknown config key 'checkpont'", "did you mean 'checkpoint'?")


# ------------------------------------------------------------- renamed presets and moved keys
def test_an_old_preset_name_names_the_new_one_in_one_line(tmp_path):
    proc = run_script("train.py", "experiment=dyconv_imagenet_resnet18", f"hydra.run.dir={tmp_path}")
    assert_one_line_error(proc, "experiment=dyconv_imagenet_resnet18 was renamed to dyconv_imagenet_resnet18_dynamic")


def test_an_old_preset_name_inside_a_sweep_is_caught_too(capsys):
    args = ["experiment=ours_cifar100_resnet18_static,coco_retinanet_r50_fpn_1x", "conv=static,dynamic"]
    with pytest.raises(SystemExit) as stop:
        check_group_choices(CONFIG_DIR, args)
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("error: experiment=coco_retinanet_r50_fpn_1x was renamed to "
                                       "torchvision_coco_retinanet_r50_fpn_1x_static\n")


def test_every_renamed_preset_names_an_existing_one():
    presets = {p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")}
    assert set(RENAMED_PRESETS.values()) <= presets and not set(RENAMED_PRESETS) & presets


def test_the_old_tau_key_names_the_new_one_in_one_line(tmp_path):
    proc = run_script("train.py", "trainer.temperature.epochs=10", f"hydra.run.dir={tmp_path}")
    assert_one_line_error(proc, "trainer.temperature.epochs was moved to conv.tau_schedule.epochs",
                          "use conv.tau_schedule.epochs=10")


@pytest.mark.parametrize("overrides, fragments", [
    (("conv=static", "conv.tau_schedule.epochs=5"), ("conv.tau_schedule is null", "a static conv has no τ")),
    (("logger=none", "logger.project=x"), ("logger is null in this config, so logger.project has nothing to set",)),
])
def test_a_key_under_a_null_node_is_one_line(overrides, fragments, tmp_path):
    assert_one_line_error(run_script("train.py", *overrides, f"hydra.run.dir={tmp_path}"), *fragments)


@pytest.mark.parametrize("epochs", [0, -1])
def test_no_epochs_to_train_is_one_config_error_pointing_at_eval(epochs, tmp_path):
    from a2d2c.engine.trainer import Trainer
    with pytest.raises(ConfigError, match=rf"trainer.epochs={epochs} trains nothing; use a count >= 1 .*eval.py"):
        Trainer(compose_config(*TINY, *QUIET, f"trainer.epochs={epochs}"), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


# ------------------------------------------------------------------ shapes that do not divide
@pytest.mark.parametrize("conv_type", CONV_TYPES)
def test_groups_that_do_not_divide_the_channels_are_one_config_error(conv_type):
    with pytest.raises(ConfigError, match=r"^groups=4 must divide in_channels=6 and out_channels=8$"):
        create_conv2d(conv_type, 6, 8, 3, groups=4)


# --------------------------------------------------------------------- missing or empty data
def test_an_empty_imagenet_folder_names_where_it_looked(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'train'} has no class folders"):
        build_imagenet(str(tmp_path), "train")
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'nothing' / 'val'} has no class folders"):
        build_imagenet(str(tmp_path / "nothing"), "val")


def test_an_empty_imagenet_root_ends_train_py_with_one_line(tmp_path):
    proc = run_script("train.py", "dataset=imagenet", f"dataset.root={tmp_path}", "logger=none",
                      f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(proc, "ImageNet train split not found", str(tmp_path / "train"))


# ------------------------------------------------------------------- unreadable image files
@pytest.fixture
def folder_with_bad_images(tmp_path):
    """Two classes; sorted order: a/0.png, a/1_truncated.jpg, b/2.png, b/3_text.jpg."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a" / "0.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "b" / "2.png")
    Image.new("RGB", (64, 64), (0, 255, 0)).save(tmp_path / "a" / "1_truncated.jpg")
    truncated = tmp_path / "a" / "1_truncated.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (tmp_path / "b" / "3_text.jpg").write_text("not an image")
    return tmp_path


def test_an_unreadable_image_fails_naming_the_file_by_default(folder_with_bad_images):
    dataset = TolerantImageFolder(str(folder_with_bad_images))
    assert dataset[0][1] == 0
    with pytest.raises(ConfigError, match=r"cannot read image .*1_truncated\.jpg .*dataset\.bad_images=skip"):
        dataset[1]


def test_unreadable_images_are_skipped_and_counted_when_asked(folder_with_bad_images, caplog):
    dataset = TolerantImageFolder(str(folder_with_bad_images), bad_images="skip")
    with caplog.at_level(logging.WARNING):
        samples = [dataset[i] for i in range(len(dataset))]
    # Each bad file is replaced by the next readable one (wrapping around): a/1 -> b/2, b/3 -> a/0.
    assert [label for _, label in samples] == [0, 1, 1, 0]
    assert [image.getpixel((0, 0)) for image, _ in samples] == [(255, 0, 0), (0, 0, 255), (0, 0, 255), (255, 0, 0)]
    assert dataset.num_skipped == 2
    warnings = [r.getMessage() for r in caplog.records if "skipped unreadable image" in r.getMessage()]
    assert len(warnings) == 2 and "1_truncated.jpg" in warnings[0] and "2 skipped so far" in warnings[1]


def test_an_unknown_bad_image_policy_is_a_config_error(folder_with_bad_images):
    with pytest.raises(ConfigError, match="dataset.bad_images='ignore' is not valid; use fail or skip"):
        TolerantImageFolder(str(folder_with_bad_images), bad_images="ignore")
