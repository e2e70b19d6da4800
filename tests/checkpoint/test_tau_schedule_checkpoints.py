"""τ's schedule moved from trainer.temperature to conv.tau_schedule: old checkpoints resume and evaluate as
they did, and a resume applies a schedule change only when trainer.resume_allow lists it."""
import json

import pytest
import torch

from a2d2c.checkpoint import files as ckpt
from a2d2c.checkpoint.config_upgrade import upgrade_config
from a2d2c.checkpoint.resume_check import config_changes
from a2d2c.engine.evaluation import evaluate_checkpoint
from a2d2c.engine.trainer import Trainer
from a2d2c.errors import ConfigError
from a2d2c.layers import annealed_temperature
from helpers.train_utils import QUIET, TINY, compose_config

RUN = (*TINY, *QUIET, "conv=dynamic", "optimizer=sgd", "optimizer.lr=0.1", "scheduler.warmup_t=0", "trainer.log_every=1")
OLD_TASK = "a2d2c.engine.classification.ClassificationTask"  # where the task lived before issue 13


@pytest.fixture(scope="module")
def dynamic_run(tmp_path_factory):
    """A finished 1-epoch dynamic run (4 updates), τ annealed over half of it (conv/dynamic.yaml's fraction)."""
    run_dir = tmp_path_factory.mktemp("dynamic_run")
    Trainer(compose_config(*RUN, "trainer.epochs=1"), run_dir).fit()
    return run_dir / "checkpoints" / "last.pt"


def as_old_layout(path, out):
    """The checkpoint at `path` as an a2d2c before the move wrote it: trainer.temperature, no conv.tau_schedule,
    the task's old target; checksummed again as checkpoint/files.py does (state_digest over the loaded state)."""
    state = torch.load(path, map_location="cpu", weights_only=True)  # as written: no upgrade applied
    for key in ("config", "config_unresolved"):
        config = state[key]
        config["trainer"]["temperature"] = config["conv"].pop("tau_schedule")
        config["task"]["_target_"] = OLD_TASK
    state[ckpt.CHECKSUM_KEY] = ckpt.state_digest(state)
    torch.save(state, out)
    return out


def test_an_old_layout_checkpoint_resumes_without_a_config_change_and_evaluates_as_recorded(dynamic_run, tmp_path):
    old = as_old_layout(dynamic_run, tmp_path / "old.pt")
    saved = torch.load(old, map_location="cpu", weights_only=True)
    assert "temperature" in saved["config"]["trainer"] and "tau_schedule" not in saved["config"]["conv"]
    # (a) a resume that only trains longer sees no other change: nothing about τ, the task or the trainer node.
    cfg = compose_config(*RUN, "trainer.epochs=2", "trainer.resume_allow=[trainer.epochs]", f"trainer.resume={old}")
    results = Trainer(cfg, tmp_path / "resumed").fit()
    assert [r["changes"] for r in results["resumed"]] == [{"trainer.epochs": [1, 2]}]
    assert results["final"]["step"] == 8
    # (b) eval.py's path rebuilds the model from the upgraded config and reproduces the recorded accuracy.
    evaluated = evaluate_checkpoint(old)
    assert evaluated["metrics"]["top1"] == evaluated["recorded"]["top1"]
    upgraded = ckpt.load_checkpoint(old)  # both saved configs, in today's terms
    for key in ("config", "config_unresolved"):
        assert "temperature" not in upgraded[key]["trainer"] and upgraded[key]["conv"]["tau_schedule"]["fraction"] == 0.5


@pytest.mark.parametrize("conv_type, schedule, moved", [
    ("dynamic", {"start": 30.0, "end": 1.0, "epochs": 10, "fraction": None}, "the same"),
    ("a2d2c", None, None),  # annealing was off: it stays off
    ("static", {"start": 30.0, "end": 1.0, "epochs": None, "fraction": 0.5}, None),  # no τ to anneal
])
def test_upgrade_moves_the_old_tau_key_into_the_conv_node(conv_type, schedule, moved):
    for resolved in (True, False):
        config = {"conv": {"type": conv_type}, "trainer": {"epochs": 3, "temperature": schedule}}
        upgraded = upgrade_config(config, resolved=resolved)
        assert upgraded["trainer"] == {"epochs": 3}
        assert upgraded["conv"] == {"type": conv_type, "tau_schedule": schedule if moved else None}


def test_a_tau_schedule_change_on_resume_is_applied_only_when_allowed(dynamic_run, tmp_path):
    change = ("trainer.epochs=2", "conv.tau_schedule.epochs=2", "conv.tau_schedule.fraction=null",
              f"trainer.resume={dynamic_run}")
    with pytest.raises(ConfigError, match=r"would change conv\.tau_schedule\.epochs \(None -> 2\), "
                                          r"conv\.tau_schedule\.fraction \(0\.5 -> None\), trainer\.epochs \(1 -> 2\); "
                                          r"to apply this, add trainer\.resume_allow=\[conv\.tau_schedule\.epochs,"
                                          r"conv\.tau_schedule\.fraction,trainer\.epochs\]"):
        Trainer(compose_config(*RUN, *change), tmp_path / "refused")
    # Listed: applied for real. The checkpoint annealed over 0.5 epochs (τ = 1 from then on); epoch 2 now
    # follows the new 2-epoch schedule instead.
    run = tmp_path / "resumed"
    trainer = Trainer(compose_config(*RUN, *change, "trainer.resume_allow=[trainer.epochs,conv.tau_schedule]"), run)
    assert trainer.anneal == (30.0, 1.0, 2.0)
    results = trainer.fit()
    assert results["resumed"][0]["changes"] == {"conv.tau_schedule.epochs": [None, 2],
                                                "conv.tau_schedule.fraction": [0.5, None], "trainer.epochs": [1, 2]}
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "train/img_per_s" in r]
    assert steps and all(r["step"] > 4 for r in steps)
    assert [r["temperature"] for r in steps] == pytest.approx([annealed_temperature(r["epoch"], 2.0, 30.0, 1.0)
                                                               for r in steps])
    assert all(r["temperature"] > 1.0 for r in steps[:-1])


def test_other_conv_changes_stay_fixed_even_when_listed(dynamic_run, tmp_path):
    cfg = compose_config(*RUN, "conv.options.num_kernels=2", "trainer.resume_allow=[conv]",
                         f"trainer.resume={dynamic_run}")
    with pytest.raises(ConfigError, match=r"cannot resume .* as another model or dataset: conv\.options\.num_kernels"):
        Trainer(cfg, tmp_path)


def test_a_static_conv_tau_schedule_is_not_compared():
    # A static model has no τ: the preset's values over its null (or an upgraded null) are no change.
    saved = {"conv": {"type": "static", "tau_schedule": None}, "trainer": {"epochs": 2}}
    preset = {"conv": {"type": "static", "tau_schedule": {"start": 30.0, "end": 1.0, "epochs": 10, "fraction": None}},
              "trainer": {"epochs": 2}}
    assert config_changes(saved, preset) == {}
    dynamic = {"conv": {"type": "dynamic", "tau_schedule": {"start": 30.0, "epochs": 10}}}
    assert set(config_changes(dynamic, {"conv": {"type": "dynamic", "tau_schedule": {"start": 5.0, "epochs": 10}}})) \
        == {"conv.tau_schedule.start"}
