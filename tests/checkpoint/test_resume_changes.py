"""A resume honours a config change or refuses it, never ignores it; checkpoint formats are versioned."""
import json

import pytest
import torch

from a2d2c.engine.trainer import Trainer
from a2d2c.engine.evaluation import evaluate_checkpoint
from a2d2c.checkpoint import files as ckpt
from a2d2c.errors import ConfigError
from helpers.train_utils import QUIET, TINY, compose_config

RUN = (*TINY, *QUIET, "conv=static", "optimizer=sgd", "optimizer.lr=0.1", "scheduler.warmup_t=0")
ALLOW = "trainer.resume_allow=[trainer.epochs,optimizer]"


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A finished 1-epoch run (4 updates) with a recovery checkpoint after every update."""
    run_dir = tmp_path_factory.mktemp("one_epoch")
    Trainer(compose_config(*RUN, "trainer.epochs=1", "trainer.checkpoint_every_steps=1", "trainer.keep_last=10"),
            run_dir).fit()
    return run_dir / "checkpoints"


def _lrs(run_dir) -> dict:
    return {r["step"]: r["lr"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "train/loss" in r and "lr" in r}


def test_more_epochs_and_a_new_lr_are_applied_for_real_when_allowed(one_epoch, tmp_path):
    straight = tmp_path / "straight"
    Trainer(compose_config(*RUN, "trainer.epochs=2", "optimizer.lr=0.5"), straight).fit()
    resumed = tmp_path / "resumed"
    results = Trainer(compose_config(*RUN, "trainer.epochs=2", "optimizer.lr=0.5", "optimizer.weight_decay=0.01", ALLOW,
                                     f"trainer.resume={one_epoch / 'last.pt'}"), resumed).fit()
    # The added epoch runs on the new 2-epoch schedule at the new LR: the LRs a 2-epoch lr=0.5 run has there.
    after = {step: lr for step, lr in _lrs(resumed).items() if step > 4}
    assert after and all(lr > 0 for lr in after.values())
    assert after == {step: lr for step, lr in _lrs(straight).items() if step > 4}
    history = results["resumed"]
    assert len(history) == 1 and history[0]["step"] == 4
    assert history[0]["changes"] == {"optimizer.lr": [0.1, 0.5], "optimizer.weight_decay": [0.0001, 0.01],
                                     "trainer.epochs": [1, 2]}
    assert results["config"]["optimizer"]["lr"] == 0.5  # recorded, and what ran
    state = ckpt.load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.01
    assert state["resume_history"] == history


def test_a_change_that_is_not_allowed_stops_with_one_line_naming_it(one_epoch, tmp_path):
    cfg = compose_config(*RUN, "trainer.epochs=2", "optimizer.lr=0.5", f"trainer.resume={one_epoch / 'last.pt'}")
    with pytest.raises(ConfigError, match=r"would change optimizer\.lr \(0\.1 -> 0\.5\), trainer\.epochs \(1 -> 2\); "
                                          r"to apply this, add trainer\.resume_allow=\[optimizer\.lr,trainer\.epochs\]"):
        Trainer(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_the_model_or_data_cannot_change_on_resume(one_epoch, tmp_path):
    # Another dataset with the same class count, and another seed: refused before any training.
    cfg = compose_config(*RUN, "dataset.train_size=48", "seed=3", f"trainer.resume={one_epoch / 'last.pt'}", ALLOW)
    with pytest.raises(ConfigError, match=r"cannot resume .* as another model or dataset: dataset\.train_size \(32 -> 48\), "
                                          r"seed \(0 -> 3\)"):
        Trainer(cfg, tmp_path)


def test_paths_and_reporting_may_change_freely(one_epoch, tmp_path):
    cfg = compose_config(*RUN, "trainer.epochs=1", "trainer.log_every=1", "trainer.keep_last=1", f"trainer.resume={one_epoch / 'last.pt'}")
    assert Trainer(cfg, tmp_path).step == 4


def test_a_mid_epoch_checkpoint_refuses_another_batch_size(one_epoch, tmp_path):
    mid_epoch = ckpt.numbered_checkpoint_path(one_epoch, 2)
    assert ckpt.load_checkpoint(mid_epoch)["batches_done"] == 2
    cfg = compose_config(*RUN, "trainer.batch_size=4", "trainer.resume_allow=[trainer.batch_size]",
                         f"trainer.resume={mid_epoch}")
    with pytest.raises(ConfigError, match=r"saved 2 batches into epoch 1, and this run changes per_device_batch \(8 -> 4\)"):
        Trainer(cfg, tmp_path)
    # At an epoch boundary the same change is honoured.
    cfg = compose_config(*RUN, "trainer.epochs=2", "trainer.batch_size=4", "trainer.resume_allow=[trainer.batch_size,trainer.epochs]",
                         f"trainer.resume={one_epoch / 'last.pt'}")
    assert Trainer(cfg, tmp_path).fit()["final"]["step"] == 4 + 8


def test_fewer_epochs_than_trained_is_refused(one_epoch, tmp_path):
    Trainer(compose_config(*RUN, "trainer.epochs=2", ALLOW, f"trainer.resume={one_epoch / 'last.pt'}"), tmp_path).fit()
    cfg = compose_config(*RUN, "trainer.epochs=1", ALLOW, "trainer.resume=auto")
    with pytest.raises(ConfigError, match=r"trainer\.epochs=1, but .* has trained 2 epochs already"):
        Trainer(cfg, tmp_path)


def _rewrite(path, out, edit):
    state = ckpt.load_checkpoint(path)
    edit(state)
    state[ckpt.CHECKSUM_KEY] = ckpt.state_digest(state)
    torch.save(state, out)
    return out


def test_an_older_checkpoint_lacking_a_key_is_one_line_naming_it(one_epoch, tmp_path):
    def as_format_1(state):
        for key in ("format", "rng", "batch", "class_map", "resume_history"):
            state.pop(key)
    old = _rewrite(one_epoch / "last.pt", tmp_path / "old.pt", as_format_1)
    with pytest.raises(ckpt.CheckpointFormatError, match=r"old\.pt \(format 1; this a2d2c writes 2\) lacks rng"):
        Trainer(compose_config(*RUN, f"trainer.resume={old}"), tmp_path / "run")
    # resume=auto names it too, rather than skipping it as damaged and starting over
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    old.rename(tmp_path / "run" / "checkpoints" / "last.pt")
    with pytest.raises(ckpt.CheckpointFormatError, match="lacks rng"):
        Trainer(compose_config(*RUN, "trainer.resume=auto"), tmp_path / "run")


def test_a_newer_checkpoint_format_is_one_line(one_epoch, tmp_path):
    newer = _rewrite(one_epoch / "last.pt", tmp_path / "new.pt", lambda state: state.update(format=3))
    with pytest.raises(ckpt.CheckpointFormatError, match=r"has format 3, newer than this a2d2c reads \(up to 2\)"):
        ckpt.load_checkpoint(newer)


def test_a_checkpoint_from_before_keep_static_evaluates_as_it_was_built(tmp_path):
    # Before backbones kept convs static by default, DY-MobileNetV2 converted features.18 too.
    run = tmp_path / "run"
    Trainer(compose_config(*TINY, *QUIET, "conv=dynamic", "trainer.epochs=1", "backbone.keep_static=[]"), run).fit()

    def as_saved_before(state):
        for key in ("config", "config_unresolved"):
            del state[key]["backbone"]["keep_static"], state[key]["task"]["model"]["keep_static"]
    old = _rewrite(run / "checkpoints" / "last.pt", tmp_path / "old.pt", as_saved_before)
    results = evaluate_checkpoint(old)
    assert results["metrics"]["top1"] == results["recorded"]["top1"]
