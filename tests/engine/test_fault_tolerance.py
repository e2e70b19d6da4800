"""Fault tolerance: checksummed atomic checkpoints, safe loading, resume=auto, preemption signals,
non-finite losses, mid-epoch recovery and kill -9 at random points (README "Fault tolerance")."""
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from a2d2c.data import build_train_loader
from a2d2c.data.digits import Digits
from a2d2c.engine.trainer import Trainer
from a2d2c.engine.divergence import NonFiniteLossError
from a2d2c.checkpoint import files as ckpt
from a2d2c.distributed.process_group import DistInfo
from helpers.train_utils import QUIET, REPO, TINY, compose_config, wait_for_step

STATE = {"model": {"w": torch.arange(64, dtype=torch.float32)}, "config": {"seed": 0}, "step": 3}


def _weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------ checksums, atomic writes
def test_checkpoint_round_trips_with_its_checksum_and_opens_with_plain_torch_load(tmp_path):
    path = ckpt.save_checkpoint(STATE, tmp_path / "c.pt")
    state = ckpt.load_checkpoint(path)
    assert torch.equal(state["model"]["w"], STATE["model"]["w"]) and len(state["checksum"]) == 64
    assert torch.load(path, weights_only=True)["step"] == 3  # no a2d2c needed to open it


def test_a_damaged_checkpoint_fails_its_checksum_and_is_named(tmp_path):
    path = ckpt.save_checkpoint(STATE, tmp_path / "c.pt")
    data = bytearray(path.read_bytes())
    # Flip one bit inside the tensor's bytes (42.0 as float32, stored uncompressed in the zip).
    offset = data.find(torch.tensor([42.0]).numpy().tobytes())
    assert offset > 0
    data[offset + 2] ^= 0x01
    path.write_bytes(bytes(data))
    # torch.load itself does not notice: only the checksum does.
    assert torch.load(path, weights_only=True)["model"]["w"][42] != 42.0
    with pytest.raises(ckpt.CheckpointError, match=rf"checkpoint {path} is corrupt: .* checksum"):
        ckpt.load_checkpoint(path)


def test_a_truncated_checkpoint_is_named(tmp_path):
    path = ckpt.save_checkpoint(STATE, tmp_path / "c.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ckpt.CheckpointError, match=rf"cannot read checkpoint {path} \(truncated"):
        ckpt.load_checkpoint(path)


class WritesAFile:
    """A pickle bomb: unpickling it calls Path.write_text, i.e. runs code chosen by the file's author."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return Path.write_text, (Path(self.target), "pwned")


def test_a_checkpoint_with_pickled_objects_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned.txt"
    bomb = tmp_path / "bomb.pt"
    torch.save({"model": {}, "config": {}, "payload": WritesAFile(marker)}, bomb)
    with pytest.raises(ckpt.CheckpointError, match="refusing to load .*bomb.pt.*pickled Python objects"):
        ckpt.load_checkpoint(bomb)
    assert not marker.exists()
    # The bomb is live: an unsafe load would have written the file.
    torch.load(bomb, weights_only=False)
    assert marker.read_text() == "pwned"


def test_disk_full_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = ckpt.save_checkpoint(STATE, tmp_path / "last.pt")
    before = path.read_bytes()

    def save_until_the_disk_fills(obj, f):
        f.write(b"PK\x03\x04" + b"\0" * 1000)  # part of a checkpoint reaches the temp file first
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt.torch, "save", save_until_the_disk_fills)
    with pytest.raises(ckpt.CheckpointError, match=r"cannot write checkpoint .*last\.pt: No space left on device"):
        ckpt.save_checkpoint({**STATE, "step": 4}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and ckpt.load_checkpoint(path)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_saved_config_is_plain_data(tmp_path):
    Trainer(compose_config(*TINY, *QUIET, "conv=static", "trainer.epochs=1"), tmp_path).fit()
    config = ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.pt")["config"]

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (str, int, float, bool))

    assert plain(config) and config["backbone"]["name"] == "mobilenetv2_x0_35"


# --------------------------------------------------------------------- keep-last-N, resume=auto
def test_keep_last_n_numbered_checkpoints_and_last_is_the_newest(tmp_path):
    cfg = compose_config(*TINY, *QUIET, "conv=static", "trainer.epochs=2", "trainer.checkpoint_every_steps=1",
                         "trainer.keep_last=2")
    Trainer(cfg, tmp_path).fit()
    directory = tmp_path / "checkpoints"
    assert sorted(p.name for p in directory.iterdir()) == ["best.pt", "last.pt", "step-000000007.pt", "step-000000008.pt"]
    assert ckpt.load_checkpoint(directory / "last.pt")["checksum"] == ckpt.load_checkpoint(directory / "step-000000008.pt")["checksum"]


def test_resume_auto_skips_a_damaged_newest_checkpoint_with_a_warning(tmp_path, caplog):
    overrides = (*TINY, *QUIET, "conv=static", "trainer.resume=auto")
    Trainer(compose_config(*overrides, "trainer.epochs=2"), tmp_path).fit()
    newest = tmp_path / "checkpoints" / "step-000000008.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # last.pt is the same file: it is damaged too
    trainer = Trainer(compose_config(*overrides, "trainer.epochs=2"), tmp_path)
    assert (trainer.epoch, trainer.step) == (1, 4) and trainer.last_checkpoint.name == "step-000000004.pt"
    assert any("step-000000008.pt" in r.getMessage() for r in caplog.records)


def test_resume_auto_refuses_when_every_checkpoint_is_damaged(tmp_path):
    overrides = (*TINY, *QUIET, "conv=static", "trainer.epochs=1", "trainer.resume=auto")
    Trainer(compose_config(*overrides), tmp_path).fit()
    for path in (tmp_path / "checkpoints").glob("*.pt"):
        path.write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="no valid checkpoint in .*step-000000004.pt"):
        Trainer(compose_config(*overrides), tmp_path)


def test_disk_full_during_a_run_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    overrides = (*TINY, *QUIET, "conv=static", "trainer.resume=auto")
    Trainer(compose_config(*overrides, "trainer.epochs=1"), tmp_path).fit()
    good = (tmp_path / "checkpoints" / "last.pt").read_bytes()

    def no_space(obj, f):
        f.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    trainer = Trainer(compose_config(*overrides, "trainer.epochs=2", "trainer.resume_allow=[trainer.epochs]"), tmp_path)
    monkeypatch.setattr(ckpt.torch, "save", no_space)
    with pytest.raises(ckpt.CheckpointError, match="step-000000008.pt: No space left on device"):
        trainer.fit()
    monkeypatch.undo()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.pt", "last.pt", "step-000000004.pt"]
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == good
    assert Trainer(compose_config(*overrides, "trainer.epochs=2", "trainer.resume_allow=[trainer.epochs]"), tmp_path).step == 4


# ------------------------------------------------------------------------------ non-finite loss
def _nan_at_update(trainer, update: int):
    """Make the loss of the given (1-based) optimizer update NaN."""
    calls = {"n": 0}
    training_step = trainer.task.training_step

    def poisoned(model, batch):
        loss, metrics = training_step(model, batch)
        calls["n"] += 1
        return (loss * float("nan"), metrics) if calls["n"] == update else (loss, metrics)

    trainer.task.training_step = poisoned


def test_nonfinite_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(compose_config(*TINY, *QUIET, "conv=static", "trainer.epochs=2"), tmp_path)
    _nan_at_update(trainer, 6)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, step 6 .*last good checkpoint is "
                                                 r".*step-000000004\.pt.*trainer\.skip_nonfinite=true"):
        trainer.fit()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt", "step-000000004.pt"]


def test_nonfinite_loss_is_skipped_and_counted_when_asked(tmp_path):
    trainer = Trainer(compose_config(*TINY, *QUIET, "conv=static", "trainer.epochs=2", "trainer.skip_nonfinite=true"), tmp_path)
    _nan_at_update(trainer, 6)
    results = trainer.fit()
    assert results["final"]["step"] == 7 and results["final"]["train/skipped_steps"] == 1
    assert torch.isfinite(torch.tensor(results["final"]["train/loss"]))
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["skipped_steps"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_weights_never_overwrite_a_good_checkpoint(tmp_path):
    trainer = Trainer(compose_config(*TINY, *QUIET, "conv=static", "trainer.epochs=1"), tmp_path)
    trainer.fit()
    good = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    trainer.step += 1
    with pytest.raises(NonFiniteLossError, match="weights are not finite.*not saving over the last good checkpoint .*step-000000004.pt"):
        trainer.save_checkpoint({}, is_best=True)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == good
    assert not (tmp_path / "checkpoints" / "step-000000005.pt").exists()


# ---------------------------------------------------- per-sample augmentation, mid-epoch recovery
def _epoch_batches(num_workers: int, epoch: int):
    loader = build_train_loader(Digits("train", image_size=8, augment=True), 64, DistInfo(), seed=0, num_workers=num_workers)
    loader.sampler.set_epoch(epoch)
    return [images for images, _ in loader][:4]


def test_augmentation_is_seeded_per_sample_and_epoch_not_by_worker_count():
    torch.manual_seed(1)
    in_process = _epoch_batches(0, epoch=0)
    torch.manual_seed(2)  # the global RNG plays no part
    with_workers = _epoch_batches(2, epoch=0)
    assert all(torch.equal(a, b) for a, b in zip(in_process, with_workers))
    next_epoch = _epoch_batches(0, epoch=1)
    assert not torch.equal(in_process[0], next_epoch[0])


class Interrupted(Exception):
    pass


def test_mid_epoch_recovery_checkpoint_resumes_to_identical_weights_with_augmentation(tmp_path, monkeypatch):
    # Digits (random shifts, seeded per sample), dropout and mixup: torch, numpy and sampler state all matter.
    overrides = (*QUIET, "backbone=mobilenetv2_x0_35", "conv=static", "dataset.image_size=8", "trainer.batch_size=256",
                 "trainer.epochs=2", "backbone.dropout=0.2", "task.mixup_alpha=0.2", "trainer.deterministic=true",
                 "trainer.checkpoint_every_steps=2", "trainer.resume=auto")
    straight = Trainer(compose_config(*overrides), tmp_path / "straight")
    straight.fit()

    optimizer_step = Trainer._optimizer_step

    def crash_after_update_7(self):
        optimizer_step(self)
        if self.step == 7:  # epoch 2, mid-way; the recovery checkpoint of update 6 is the newest
            raise Interrupted

    monkeypatch.setattr(Trainer, "_optimizer_step", crash_after_update_7)
    with pytest.raises(Interrupted):
        Trainer(compose_config(*overrides), tmp_path / "resumed").fit()
    monkeypatch.undo()
    resumed = Trainer(compose_config(*overrides), tmp_path / "resumed")
    assert (resumed.epoch, resumed.step, resumed.batches_done) == (1, 6, 1)
    resumed.fit()
    assert _weights_equal(resumed.model.state_dict(), straight.model.state_dict())


# ------------------------------------------------------------- real processes: signals, kill -9
SUBPROCESS_RUN = (*TINY, "logger=none", "trainer.progress_bar=false", "conv=dynamic", "trainer.epochs=3",
                  "backbone.dropout=0.2", "task.mixup_alpha=0.2", "trainer.deterministic=true", "trainer.log_every=1",
                  "trainer.checkpoint_every_steps=2", "trainer.resume=auto")
TOTAL_STEPS = 12  # 3 epochs × 32 samples / batch 8


def _start(run_dir: Path, *extra) -> subprocess.Popen:
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / f"stderr-{time.monotonic_ns()}.txt", "w")
    return subprocess.Popen([sys.executable, "train.py", *SUBPROCESS_RUN, *extra, f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)


def _final_model(run_dir: Path) -> dict:
    return ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    proc = _start(run_dir)
    assert proc.wait(timeout=300) == 0
    state = _final_model(run_dir)
    assert state["step"] == TOTAL_STEPS
    return state


def test_kill_9_at_random_points_then_resume_gives_bitwise_identical_weights(uninterrupted, tmp_path):
    kill_steps = sorted(random.Random(7).sample(range(1, TOTAL_STEPS), 3))
    metrics = tmp_path / "metrics.jsonl"
    for step in kill_steps:
        offset = metrics.stat().st_size if metrics.is_file() else 0
        proc = _start(tmp_path)
        wait_for_step(proc, metrics, step, offset)
        proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: the process just vanishes
        assert proc.wait(timeout=60) == -signal.SIGKILL, f"the run ended before the kill at step {step}"
    proc = _start(tmp_path)
    assert proc.wait(timeout=300) == 0
    resumed = _final_model(tmp_path)
    assert resumed["step"] == TOTAL_STEPS
    assert _weights_equal(resumed["model"], uninterrupted["model"]), f"kill points {kill_steps}"
    assert _weights_equal(resumed["optimizer"]["state"][0], uninterrupted["optimizer"]["state"][0])


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)])
def test_preemption_signal_saves_exits_and_resume_auto_finishes_identically(uninterrupted, tmp_path, signum):
    metrics = tmp_path / "metrics.jsonl"
    proc = _start(tmp_path)
    wait_for_step(proc, metrics, 5, 0)
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == 128 + signum
    stderr = "".join(p.read_text() for p in tmp_path.glob("stderr-*.txt"))
    assert "Traceback" not in stderr
    assert f"received {signal.Signals(signum).name}: saved" in (tmp_path / "train.log").read_text()
    saved = ckpt.load_newest_valid(tmp_path / "checkpoints")[1]
    assert 5 <= saved["step"] < TOTAL_STEPS
    assert _start(tmp_path).wait(timeout=300) == 0
    assert _weights_equal(_final_model(tmp_path)["model"], uninterrupted["model"])


# --------------------------------------------------------------------------- torchrun elastic
def _torchrun(run_dir: Path, *extra, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / f"stderr-{time.monotonic_ns()}.txt", "w")
    # No trainer.resume: a restarted job continues in its run dir by itself (a2d2c/cli/run_dir.py).
    overrides = [o for o in SUBPROCESS_RUN if o != "trainer.resume=auto"]
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", *extra, "train.py",
                             *overrides, f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)


def _worker_with_rank(agent_pid: int, rank: int) -> int:
    for child in Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no worker with RANK={rank} under {agent_pid}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through /proc")
def test_torchrun_max_restarts_resumes_after_a_rank_is_killed(tmp_path):
    straight = _torchrun(tmp_path / "straight")
    assert straight.wait(timeout=600) == 0
    run_dir = tmp_path / "elastic"
    # c10d rendezvous (--standalone on one node) with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, so each restart
    # gets a fresh store: otherwise a restarted rank can read the dead rank 0's gloo address from the shared
    # store and fail to connect (connection refused, in about one run in three on the 2-core machine).
    proc = _torchrun(run_dir, "--standalone", "--max-restarts=1", env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})
    wait_for_step(proc, run_dir / "metrics.jsonl", 7, 0, timeout=300)
    os.kill(_worker_with_rank(proc.pid, 1), signal.SIGKILL)  # rank 1 dies; the agent restarts both ranks
    assert proc.wait(timeout=600) == 0, "".join(p.read_text() for p in run_dir.glob("stderr-*.txt"))[-4000:]
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert _weights_equal(_final_model(run_dir)["model"], _final_model(tmp_path / "straight")["model"])
