"""One run, one directory; preemption and requeue continue where the run stopped (README "Fault tolerance")."""
import json
import os
import shlex
import signal
import subprocess
import sys

import pytest

from a2d2c.engine.trainer import Trainer
from a2d2c.checkpoint import files as ckpt
from a2d2c.cli import run_dir
from helpers.cli import assert_one_line_error
from helpers.train_utils import REPO, TINY, compose_config, run_script, wait_for_step

RUN = (*TINY, "logger=none", "trainer.progress_bar=false", "conv=static", "trainer.log_every=1")


def _train(cwd, *overrides, env=None, wait=True):
    """train.py run from `cwd`, so that its default run dirs land under cwd/outputs/."""
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *overrides], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        proc.communicate(timeout=300)
    return proc


def _run_dirs(cwd):
    return sorted(p for p in (cwd / "outputs").glob("*/*") if p.is_dir())


# ----------------------------------------------------------------------------------- names
def test_run_stamps_are_unique_per_run_and_shared_by_the_ranks_of_a_job():
    assert run_dir.run_stamp({}) != run_dir.run_stamp({})
    ranks = [{"TORCHELASTIC_RUN_ID": "abc", "RANK": str(r)} for r in (0, 1)]
    # job_start_time is the same on every rank (shared through torchrun's store; one process here).
    assert run_dir.run_stamp(ranks[0]) == run_dir.run_stamp(ranks[1])


def test_a_restarted_job_reads_its_first_stamp_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "outputs" / "2026-01-02" / "03-04-05-a1b2c3_resnet10_a2d2c_digits"
    env = {"SLURM_JOB_ID": "77"}
    assert not run_dir.claim_run_dir(first, resume=None, env=env)
    run_dir.release(first)
    assert run_dir.run_stamp({**env, "SLURM_RESTART_COUNT": "1"}) == "2026-01-02/03-04-05-a1b2c3"
    assert run_dir.run_stamp(env) != "2026-01-02/03-04-05-a1b2c3"  # a new job attempt, not a restart: a new dir
    assert run_dir.job_key({"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "8", "SLURM_ARRAY_TASK_ID": "3"}) == "slurm-8_3"


def test_two_runs_started_together_get_two_directories(tmp_path):
    procs = [_train(tmp_path, *RUN, "trainer.epochs=1", f"seed={seed}", wait=False) for seed in (1, 2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    dirs = _run_dirs(tmp_path)
    assert len(dirs) == 2, dirs
    seeds = sorted(json.loads((d / "results.json").read_text())["config"]["seed"] for d in dirs)
    assert seeds == [1, 2]
    for d in dirs:  # each dir's own config, metrics and checkpoints
        config = (d / ".hydra" / "config.yaml").read_text()
        assert f"seed: {ckpt.load_checkpoint(d / 'checkpoints' / 'last.pt')['config']['seed']}" in config
        assert {json.loads(line)["step"] for line in (d / "metrics.jsonl").read_text().splitlines()} == {1, 2, 3, 4}


# ----------------------------------------------------------------------- a dir that is taken
def test_a_second_writer_of_a_live_run_dir_stops_with_one_line_and_writes_nothing(tmp_path):
    live = tmp_path / "run"
    run_dir.claim_run_dir(live, resume=None)  # this test process is the live run
    try:
        proc = run_script("train.py", *RUN, "trainer.epochs=1", f"hydra.run.dir={live}")
        assert_one_line_error(proc, f"run dir {live} is in use by a live run (pid {os.getpid()}")
        assert sorted(p.name for p in live.iterdir()) == ["run.json", "run.lock", "train.log"]
    finally:
        run_dir.release(live)


def test_a_fixed_dir_holding_a_run_is_refused_unless_resumed(tmp_path):
    fixed = tmp_path / "run"
    assert run_script("train.py", *RUN, "trainer.epochs=1", f"hydra.run.dir={fixed}").returncode == 0
    before = {p: p.read_bytes() for p in fixed.rglob("*") if p.is_file() and p.name not in ("train.log", "run.lock")}
    proc = run_script("train.py", *RUN, "trainer.epochs=1", "seed=5", f"hydra.run.dir={fixed}")
    assert_one_line_error(proc, f"run dir {fixed} already holds a finished run", "trainer.resume=auto")
    assert {p: p.read_bytes() for p in before} == before  # nothing already written was touched
    proc = run_script("train.py", *RUN, "trainer.epochs=2", "trainer.resume=auto", "trainer.resume_allow=[trainer.epochs]",
                      f"hydra.run.dir={fixed}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((fixed / "results.json").read_text())["final"]["epoch"] == 2


def test_stale_temp_files_of_a_killed_write_are_removed(tmp_path, caplog):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    (directory / ".step-000000004.pt.k3j_a.tmp").write_bytes(b"\0" * 10)
    (directory / ".last.pt.link.tmp").write_bytes(b"")
    (directory / "step-000000002.pt").write_bytes(b"kept")
    assert ckpt.remove_stale_temp_files(directory) == 2
    assert [p.name for p in directory.iterdir()] == ["step-000000002.pt"]
    assert "removed 2 temp file(s)" in caplog.text


# -------------------------------------------------------------------- preemption and requeue
def test_the_preemption_message_is_a_command_that_continues_the_run(tmp_path):
    proc = _train(tmp_path, *RUN, "trainer.epochs=3", "trainer.checkpoint_every_steps=2", wait=False)
    metrics = lambda: next((d / "metrics.jsonl" for d in _run_dirs(tmp_path)), tmp_path / "none")  # noqa: E731
    while proc.poll() is None and not metrics().is_file():
        pass
    wait_for_step(proc, metrics(), 5, 0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    (first,) = _run_dirs(tmp_path)
    line = next(line for line in (first / "train.log").read_text().splitlines() if "continue with: " in line)
    command = shlex.split(line.split("continue with: ", 1)[1])
    assert command[:2] == ["python", "train.py"]
    # Verbatim, from the directory the run was started in.
    done = subprocess.run([sys.executable, str(REPO / "train.py"), *command[2:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "WANDB_SILENT": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert _run_dirs(tmp_path) == [first]
    assert "resumed from" in (first / "train.log").read_text()
    assert json.loads((first / "results.json").read_text())["final"]["step"] == 12


def test_a_requeued_slurm_job_continues_in_its_run_dir_with_no_extra_flag(tmp_path):
    job = {"SLURM_JOB_ID": "4242"}
    proc = _train(tmp_path, *RUN, "trainer.epochs=3", "trainer.checkpoint_every_steps=2", env=job, wait=False)
    while proc.poll() is None and not _run_dirs(tmp_path):
        pass
    wait_for_step(proc, _run_dirs(tmp_path)[0] / "metrics.jsonl", 5, 0)
    proc.send_signal(signal.SIGTERM)  # SLURM's notice before it requeues the job
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    (first,) = _run_dirs(tmp_path)
    # The same command, as SLURM reruns it: same job id, its restart count raised.
    requeued = _train(tmp_path, *RUN, "trainer.epochs=3", "trainer.checkpoint_every_steps=2",
                      env={**job, "SLURM_RESTART_COUNT": "1"})
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert _run_dirs(tmp_path) == [first]
    results = json.loads((first / "results.json").read_text())
    assert results["final"]["step"] == 12 and results["resumed"][0]["step"] >= 4


def test_resume_auto_that_finds_nothing_says_where_it_looked(tmp_path, caplog):
    Trainer(compose_config(*RUN, "trainer.epochs=1", "trainer.resume=auto"), tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"trainer.resume=auto: no checkpoint in {tmp_path / 'checkpoints'}, starting from scratch" in warnings


@pytest.mark.parametrize("env, launcher", [
    ({}, "python train.py"),
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"}, "torchrun --standalone --nproc_per_node=4 train.py"),
])
def test_continue_command_quotes_the_overrides_and_names_the_run_dir(tmp_path, env, launcher):
    command = run_dir.continue_command(tmp_path, ["conv=static", "trainer.resume=auto", "logger.name=my run"], env)
    assert command == f"{launcher} conv=static 'logger.name=my run' hydra.run.dir={tmp_path} trainer.resume=auto"
