"""τ's schedule: its length in epochs or as a fraction of the run, every shipped config annealed before its last
epoch, and a model started from a dynamic run's weights keeping their τ (conv.tau_schedule.from_weights)."""
import json
import logging

import pytest
import torch

from a2d2c.engine.trainer import Trainer
from a2d2c.engine.temperature_schedule import TemperatureSchedule, plan_temperature
from a2d2c.layers import MixtureConv2d, annealed_temperature, set_temperature
from a2d2c.models import build_classifier
from a2d2c.checkpoint import files as ckpt
from a2d2c.config_checks import check_train_config
from helpers.train_utils import CONFIG_DIR, QUIET, TINY, compose_config

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))  # coco and shapes bring a recipe


@pytest.mark.parametrize("overrides", [[]] + [[f"experiment={e}"] for e in EXPERIMENTS]
                         + [[f"dataset={d}"] for d in DATASETS], ids=lambda o: o[0] if o else "default")
def test_the_default_and_every_preset_end_annealed_before_their_last_epoch(overrides):
    cfg = compose_config(*overrides)
    if cfg.conv.type == "static":  # a static preset's schedule is for the dynamic runs made from it
        cfg = compose_config(*overrides, "conv=dynamic")
    check_train_config(cfg)
    schedule = TemperatureSchedule.from_config(cfg)
    last_epoch_start = cfg.trainer.epochs - 1
    assert schedule.epochs <= last_epoch_start, (schedule, cfg.trainer.epochs)
    assert schedule.at(last_epoch_start) == schedule.end == 1.0 and schedule.at(0) == schedule.start == 30.0


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e.startswith("dyconv_")])
def test_dyconv_presets_keep_the_papers_ten_epochs(experiment):
    cfg = compose_config(f"experiment={experiment}")
    assert TemperatureSchedule.from_config(cfg) == (30.0, 1.0, 10.0)


def test_a_fraction_is_of_trainer_epochs_and_the_trainer_follows_it(tmp_path):
    # 2 epochs, τ over 0.75 of them: 30 -> 1 in 1.5 epochs, then 1.
    cfg = compose_config(*TINY, *QUIET, "conv=dynamic", "trainer.epochs=2", "conv.tau_schedule.fraction=0.75",
                         "trainer.log_every=1")
    trainer = Trainer(cfg, tmp_path)
    assert trainer.anneal == (30.0, 1.0, 1.5)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/img_per_s" in r]  # one per update (log_every=1), at its fractional epoch
    assert len(steps) == 2 * trainer.updates_per_epoch
    assert [r["temperature"] for r in steps] == pytest.approx(
        [annealed_temperature(r["epoch"], 1.5, 30.0, 1.0) for r in steps])
    assert any(1.0 < r["temperature"] < 30.0 for r in steps) and steps[-1]["temperature"] == 1.0


def test_a_static_conv_ignores_the_schedule_a_preset_gives_it_and_a_dynamic_one_takes_it_whole():
    static = compose_config("experiment=ours_cifar100_resnet18_static")
    # The preset's values land on conv/static.yaml's null: a partial node (no from_weights), never read.
    assert dict(static.conv.tau_schedule) == {"start": 30.0, "end": 1.0, "epochs": 10, "fraction": None}
    check_train_config(static)
    check_train_config(compose_config("experiment=ours_cifar100_resnet18_static", "conv.tau_schedule.start=0",
                                      "conv.tau_schedule.epochs=-1"))  # values that a dynamic conv refuses
    assert plan_temperature(static, build_classifier("resnet10", "static", num_classes=3)) == (None, None)
    # The same preset with a dynamic conv: its values over the conv's own defaults.
    dynamic = compose_config("experiment=ours_cifar100_resnet18_static", "conv=a2d2c")
    assert dict(dynamic.conv.tau_schedule) == {"start": 30.0, "end": 1.0, "epochs": 10, "fraction": None,
                                               "from_weights": True}
    model = build_classifier("resnet10", "a2d2c", num_classes=3)
    assert plan_temperature(dynamic, model) == ((30.0, 1.0, 10.0), None) and set(_taus(model)) == {30.0}


# ------------------------------------------------------------------------------ τ kept from starting weights
def _shapes(root, *overrides):
    """A dynamic ResNet-10 Faster R-CNN (FPN and RPN head dynamic too) on a few 64 px shapes images."""
    return compose_config("dataset=shapes", f"dataset.root={root}", "dataset.num_train=4", "dataset.num_val=2",
                          "dataset.image_size=64", "detector.min_size=64", "detector.max_size=64", "conv=dynamic",
                          "detector.convert_head=true", "trainer.batch_size=2", "trainer.eval_batch_size=2",
                          "trainer.epochs=1", *QUIET, *overrides)


def _dynamic_weights(path, tau=None):
    """A dynamic ResNet-10 classification checkpoint at τ `tau` (None: saved before τ was model state)."""
    classifier = build_classifier("resnet10", "dynamic", num_classes=7)
    if tau is not None:
        set_temperature(classifier, tau)
    state = {k: v for k, v in classifier.state_dict().items() if tau is not None or not k.endswith(".temperature")}
    torch.save({"model": state, "config": {}}, path)
    return path


def _taus(model):
    return [float(m.temperature) for m in model.modules() if isinstance(m, MixtureConv2d)]


def test_a_detector_from_dynamic_weights_keeps_their_tau_and_logs_it(tmp_path, caplog):
    weights = _dynamic_weights(tmp_path / "dynamic.pt", tau=2.5)
    with caplog.at_level(logging.INFO, logger="a2d2c.engine.temperature_schedule"):
        trainer = Trainer(_shapes(tmp_path / "shapes", f"detector.backbone_weights={weights}"), tmp_path / "run")
    assert trainer.anneal is None and trainer.tau == 2.5
    taus = _taus(trainer.model)
    new = [n for n, m in trainer.model.named_modules() if isinstance(m, MixtureConv2d) and ".body." not in f".{n}"]
    assert len(taus) == 20 and len(new) == 9 and taus == [2.5] * 20  # the new FPN/RPN-head layers too
    assert "τ: kept at 2.5 from detector.backbone_weights=" in caplog.text
    trainer.fit()
    assert _taus(trainer.model) == [2.5] * len(taus)
    assert ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["temperature"] == 2.5


@pytest.mark.parametrize("case", ["from_weights=false", "weights without τ"])
def test_a_detector_anneals_when_asked_or_when_the_weights_carry_no_tau(case, tmp_path, caplog):
    weights = _dynamic_weights(tmp_path / "dynamic.pt", tau=None if case == "weights without τ" else 2.5)
    extra = ["conv.tau_schedule.from_weights=false"] if case == "from_weights=false" else []
    with caplog.at_level(logging.INFO, logger="a2d2c.engine.temperature_schedule"):
        trainer = Trainer(_shapes(tmp_path / "shapes", f"detector.backbone_weights={weights}", *extra), tmp_path / "run")
    assert trainer.anneal == (30.0, 1.0, 0.5) and trainer.tau is None
    assert set(_taus(trainer.model)) == {30.0}
    assert "τ: 30 -> 1 over 0.5 of 1 epochs" in caplog.text
