"""The training loop on tiny synthetic runs: resume, schedules, τ annealing, precision, checkpoints."""
import json
import sys

import pytest
import torch

from a2d2c.engine.trainer import Trainer
from a2d2c.layers import annealed_temperature
from a2d2c.models import build_classifier
from a2d2c.checkpoint import files as ckpt
from a2d2c.errors import ConfigError
from helpers.train_utils import QUIET, TINY, compose_config
from helpers.paths import REPO


class Interrupted(Exception):
    pass


def _tensors_equal(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_resume_after_epoch_one_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    # Everything random is switched on: dropout, mixup (numpy RNG), EMA, τ annealing, warmup.
    overrides = (*TINY, *QUIET, "conv=dynamic", "trainer.epochs=2", "backbone.dropout=0.2", "task.mixup_alpha=0.2",
                 "trainer.ema.enabled=true", "trainer.ema.decay=0.9", "conv.tau_schedule.epochs=2", "conv.tau_schedule.fraction=null", "scheduler.warmup_t=1")
    Trainer(compose_config(*overrides), tmp_path / "straight").fit()

    resumed_dir = tmp_path / "resumed"
    train_one_epoch = Trainer.train_one_epoch

    def stop_before_second_epoch(self, epoch):
        if epoch == 1:
            raise Interrupted
        return train_one_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_one_epoch", stop_before_second_epoch)
    with pytest.raises(Interrupted):
        Trainer(compose_config(*overrides), resumed_dir).fit()
    monkeypatch.undo()
    assert ckpt.load_checkpoint(resumed_dir / "checkpoints" / "last.pt")["epoch"] == 1

    Trainer(compose_config(*overrides, f"trainer.resume={resumed_dir / 'checkpoints' / 'last.pt'}"), resumed_dir).fit()

    straight = ckpt.load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    resumed = ckpt.load_checkpoint(resumed_dir / "checkpoints" / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 2 and resumed["step"] == straight["step"]
    for part in ("model", "ema", "optimizer"):
        assert _tensors_equal(resumed[part], straight[part]), part
    assert resumed["metrics"]["val/top1"] == straight["metrics"]["val/top1"]


def test_resume_auto_continues_from_the_run_directory(tmp_path):
    overrides = (*TINY, *QUIET, "conv=static", "trainer.resume=auto")
    Trainer(compose_config(*overrides, "trainer.epochs=1"), tmp_path).fit()
    trainer = Trainer(compose_config(*overrides, "trainer.epochs=2", "trainer.resume_allow=[trainer.epochs]"), tmp_path)
    assert (trainer.epoch, trainer.step) == (1, 4)
    assert trainer.fit()["final"]["epoch"] == 2


def test_temperature_is_annealed_per_iteration_and_static_models_are_untouched(tmp_path):
    cfg = compose_config(*TINY, *QUIET, "conv=dynamic", "trainer.epochs=1", "conv.tau_schedule.epochs=2", "conv.tau_schedule.fraction=null")
    trainer = Trainer(cfg, tmp_path)
    trainer.fit()
    updates = trainer.updates_per_epoch  # 32 samples / batch 8 = 4
    expected = annealed_temperature(updates - 1, 2 * updates, 30.0, 1.0)  # τ of the last update of epoch 1
    assert trainer.tau == pytest.approx(expected) and 1.0 < expected < 30.0
    taus = [m.temperature for m in trainer.model.modules() if hasattr(m, "temperature")]
    assert len(taus) > 10 and taus == pytest.approx([expected] * len(taus))
    assert ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.pt")["temperature"] == pytest.approx(expected)

    static = Trainer(compose_config(*TINY, *QUIET, "conv=static", "trainer.epochs=1"), tmp_path / "static")
    static.fit()
    assert static.tau is None and "temperature" not in json.loads((tmp_path / "static" / "results.json").read_text())["final"]
    assert not any(hasattr(m, "temperature") for m in static.model.modules())


def test_lr_warms_up_linearly_then_decays_per_update(tmp_path):
    cfg = compose_config(*TINY, *QUIET, "conv=static", "trainer.epochs=3", "scheduler.warmup_t=1",
                         "scheduler.warmup_lr_init=0.0", "optimizer.lr=0.4", "trainer.log_every=1")
    Trainer(cfg, tmp_path).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "train/loss" in r and "val/top1" not in r]
    assert len(lrs) == 12  # 3 epochs × 4 updates, one record per update
    # Warmup: the lr of update i (fractional epoch i/4) is 0.4 · i/4 during the first epoch.
    assert lrs[:4] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert lrs[4] == pytest.approx(0.4 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 3)).item()))
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # cosine decay after the warmup


def test_gradient_accumulation_counts_optimizer_updates(tmp_path):
    cfg = compose_config(*TINY, *QUIET, "conv=static", "trainer.epochs=1", "trainer.accum_steps=2")
    trainer = Trainer(cfg, tmp_path)
    assert trainer.train_loader.batch_size == 4  # the micro-batch
    assert trainer.fit()["final"]["step"] == 4  # 32 samples / 8 per update


def test_batch_size_must_divide_by_accumulation_steps(tmp_path):
    cfg = compose_config(*TINY, *QUIET, "trainer.accum_steps=3")
    with pytest.raises(ConfigError, match="accum_steps"):
        Trainer(cfg, tmp_path)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(tmp_path, amp):
    cfg = compose_config(*TINY, *QUIET, "conv=dynamic", "trainer.epochs=1", f"trainer.amp={amp}",
                         "trainer.clip_grad_norm=1.0", "trainer.channels_last=true")
    trainer = Trainer(cfg, tmp_path)
    assert (trainer.scaler is not None) == (amp == "fp16")
    results = trainer.fit()
    assert torch.isfinite(torch.tensor(results["final"]["train/loss"]))
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (state["scaler"] is not None) == (amp == "fp16")


def test_unknown_amp_mode_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="bf16"):
        Trainer(compose_config(*TINY, *QUIET, "trainer.amp=fp8"), tmp_path)


def test_label_smoothing_and_mixup_select_timm_losses():
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from hydra.utils import instantiate

    smooth = instantiate(compose_config("task.label_smoothing=0.1").task)
    assert isinstance(smooth.criterion, LabelSmoothingCrossEntropy) and smooth.mixup is None
    mixed = instantiate(compose_config("task.cutmix_alpha=1.0", "task.label_smoothing=0.1").task)
    assert isinstance(mixed.criterion, SoftTargetCrossEntropy) and mixed.mixup.label_smoothing == 0.1


def test_results_json_reports_best_final_complexity_and_throughput(tmp_path):
    results = Trainer(compose_config(*TINY, *QUIET, "conv=static", "trainer.epochs=2"), tmp_path).fit()
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["final"]["epoch"] == 2 and written["best"]["val/top1"] >= written["final"]["val/top1"]
    model = build_classifier("mobilenetv2_x0_35", "static", 10, "cifar")
    assert written["params"] == sum(p.numel() for p in model.parameters())
    assert written["macs"] > 0 and written["throughput"]["train_img_per_s"] > 0 and written["wall_time_s"] > 0
    assert written["config"]["backbone"]["name"] == "mobilenetv2_x0_35"
    assert results["best"] == written["best"]


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}}, path)
    with pytest.raises(Exception):
        ckpt.save_checkpoint({"model": {}, "config": {}, "unpicklable": lambda: None}, path)
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(2))  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_foreign_files_are_config_errors(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read checkpoint"):
        ckpt.load_checkpoint(tmp_path / "notes.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not an a2d2c checkpoint"):
        ckpt.load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    ckpt.save_checkpoint({"model": {}, "config": {}, "rng": ckpt.capture_rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.restore_rng_state(ckpt.load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_evaluate_checkpoint_reproduces_model_and_ema_metrics_and_applies_dataset_overrides(tmp_path):
    from a2d2c.engine.evaluation import evaluate_checkpoint

    cfg = compose_config(*TINY, *QUIET, "conv=dynamic", "trainer.epochs=1", "trainer.ema.enabled=true",
                         "trainer.ema.decay=0.5")
    Trainer(cfg, tmp_path).fit()
    best = tmp_path / "checkpoints" / "best.pt"
    recorded = ckpt.load_checkpoint(best)["metrics"]
    plain = evaluate_checkpoint(best)
    assert plain["metrics"]["top1"] == recorded["val/top1"] and plain["metrics"]["loss"] == recorded["val/loss"]
    ema = evaluate_checkpoint(best, ema=True)
    assert ema["metrics"]["loss"] == recorded["val_ema/loss"] and ema["weights"] == "ema"
    # Overrides go through the saved interpolations (dataset.eval.size is ${dataset.eval_size}).
    assert evaluate_checkpoint(best, dataset_overrides={"eval_size": 6})["metrics"]["samples"] == 6


def test_evaluating_ema_weights_of_a_run_without_ema_is_a_config_error(tmp_path):
    from a2d2c.engine.evaluation import evaluate_checkpoint

    Trainer(compose_config(*TINY, *QUIET, "conv=static", "trainer.epochs=1"), tmp_path).fit()
    with pytest.raises(ConfigError, match="no EMA weights"):
        evaluate_checkpoint(tmp_path / "checkpoints" / "last.pt", ema=True)


@pytest.mark.parametrize("conv", ["dynamic", "a2d2c"])
def test_the_training_loop_reads_no_tensor_value_between_log_steps(tmp_path, monkeypatch, conv):
    """Reading a value (item, bool, float, tolist) of a GPU tensor waits for the GPU: once per step, that
    stalls the queue. The package's own code (data loading aside) may read values only at log steps,
    checkpoints and evaluation; here no log step falls inside the batches watched."""
    trainer = Trainer(compose_config(*TINY, *QUIET, f"conv={conv}", "trainer.epochs=1", "trainer.log_every=1000",
                                     "dataset.train_size=64"), tmp_path)
    last = trainer.updates_per_epoch - 1  # the epoch's last batch is a log step
    state, reads = {"batch": -1}, []
    move_batch = trainer.task.move_batch

    def counting_move_batch(*args, **kwargs):
        state["batch"] += 1
        return move_batch(*args, **kwargs)

    monkeypatch.setattr(trainer.task, "move_batch", counting_move_batch)
    package = str(REPO / "a2d2c")
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        def spy(self, *args, _original=getattr(torch.Tensor, name), _name=name, **kwargs):
            caller = sys._getframe(1)
            where = caller.f_code.co_filename
            if 1 <= state["batch"] < last and where.startswith(package) and "/data/" not in where:
                reads.append(f"{_name} at {where}:{caller.f_lineno}")
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, spy)
    trainer.fit()
    assert state["batch"] > last  # the watched batches ran, then evaluation
    assert reads == []
