"""One run, one directory: a unique default name, a lock while a run is live, and restarts that continue.

- **Names.** `${run_stamp:}` (configs/hydra/output/runs.yaml) is `<date>/<time>-<token>`: the token
  is random per process, or drawn from torchrun's run id so that every rank of a job agrees. Two
  runs started in the same second get two directories.
- **Lock.** The process that writes the run dir's shared files (rank 0) holds an exclusive
  `flock` on `<run dir>/run.lock` while it runs; a second writer stops with one line naming the
  holder. The kernel releases the lock when a process dies, even by `kill -9`.
- **What is already there.** A run dir that holds a run (its `run.json`, checkpoints or
  `results.json`) is continued only when the user asks (`trainer.resume`) or when this process is
  a restart of the job that wrote it: a SLURM requeue (same job id, `SLURM_RESTART_COUNT` > 0) or
  a torchrun elastic restart (`TORCHELASTIC_RESTART_COUNT` > 0). Anything else is refused before a
  file is touched, so a fixed `hydra.run.dir` never overwrites another run.
- **Finding the directory again.** A restarted job composes its config anew, and its `${run_stamp:}`
  must name the same folder: the first attempt records its stamp in `outputs/.jobs/<job>.json`,
  and a restart of that job reads it back.

Hydra's own `.hydra/` copy is written here (hydra.output_subdir is null), after the checks, so a
refused run leaves no trace in the directory it was refused.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shlex
import socket
import sys
from datetime import datetime
from pathlib import Path

from a2d2c.distributed.launch_env import env_rank, job_start_time
from a2d2c.errors import ConfigError

LOCK_NAME = "run.lock"
RECORD_NAME = "run.json"
JOB_INDEX = Path("outputs") / ".jobs"  # relative to the working directory, as the default run dirs are
STAMP = re.compile(r"\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}-[0-9a-f]{6}")
DEFAULT_LAYOUT = re.compile(r"/(\d{4}-\d{2}-\d{2})/(\d{2}-\d{2}-\d{2}-[0-9a-f]{6})_[^/]+$")
_held_locks = {}  # run dir -> open lock file, kept for the life of the process


def job_key(env=os.environ):
    """The scheduler's name for this job, the same on every rank and across its restarts, or None."""
    if env.get("SLURM_JOB_ID"):
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        return f"slurm-{env['SLURM_JOB_ID']}"
    if env.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return None


def is_restart(env=os.environ) -> bool:
    """True in a process the scheduler restarted: a requeued SLURM job or a torchrun elastic restart."""
    return int(env.get("SLURM_RESTART_COUNT") or 0) > 0 or int(env.get("TORCHELASTIC_RESTART_COUNT") or 0) > 0


def _index_file(key: str) -> Path:
    return JOB_INDEX / f"{key.replace('/', '_')}.json"


def run_stamp(env=os.environ) -> str:
    """`<date>/<time>-<token>` for a new run; a restarted job's first stamp, read back from the job index."""
    key = job_key(env)
    if key is not None and is_restart(env) and _index_file(key).is_file():
        try:
            stamp = json.loads(_index_file(key).read_text())["stamp"]
        except (OSError, ValueError, KeyError, TypeError):
            stamp = None  # an unreadable index entry: a new dir; the first attempt's stays untouched
        if isinstance(stamp, str) and STAMP.fullmatch(stamp):  # a path fragment read from a file: only this shape
            return stamp
    if env.get("TORCHELASTIC_RUN_ID"):  # every rank derives the same token from the job's run id
        token = hashlib.sha1(env["TORCHELASTIC_RUN_ID"].encode()).hexdigest()[:6]
    else:
        token = secrets.token_hex(3)
    return job_start_time().strftime("%Y-%m-%d/%H-%M-%S-") + token


def register_run_stamp_resolver():
    try:
        from omegaconf import OmegaConf
    except ImportError:  # the layers, models and scripts/benchmark.py run without the config stack
        return

    OmegaConf.register_new_resolver("run_stamp", lambda: run_stamp(), use_cache=True, replace=True)


def holds_a_run(run_dir: Path) -> bool:
    """A run worth protecting: one that left a checkpoint or results (one that failed at start-up left neither)."""
    checkpoints = run_dir / "checkpoints"
    return (run_dir / "results.json").is_file() or (checkpoints.is_dir() and any(checkpoints.glob("*.pt")))


def _lock(run_dir: Path):
    """An exclusive lock on the run dir for this process, or one ConfigError line naming who holds it."""
    if run_dir in _held_locks:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_file = open(run_dir / LOCK_NAME, "a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "another process"
        lock_file.close()
        raise ConfigError(f"run dir {run_dir} is in use by a live run ({holder}); two runs never share a "
                          f"directory: wait for it to end, or choose another hydra.run.dir")
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now().isoformat(timespec='seconds')}")
    lock_file.flush()
    _held_locks[run_dir] = lock_file


def release(run_dir: Path):
    lock_file = _held_locks.pop(Path(run_dir), None)
    if lock_file is not None:
        lock_file.close()


def claim_run_dir(run_dir, resume, save_hydra_files=None, env=os.environ) -> bool:
    """Make `run_dir` this run's, or refuse in one line; True when this run continues the one already there.

    Rank 0 locks the dir, checks what it holds, records this run in `run.json` and the job index,
    and calls `save_hydra_files(dir)` for a new run. Other ranks only learn whether to continue:
    exactly when this is a restart (rank 0 refuses a restart whose dir holds another job's run).
    """
    run_dir = Path(run_dir)
    if env_rank(env) != 0:
        return is_restart(env)
    _lock(run_dir)
    key = job_key(env)
    record_path = run_dir / RECORD_NAME
    continuing = holds_a_run(run_dir)
    if continuing and not resume:
        record = _read_record(record_path)
        if not (is_restart(env) and key is not None and record.get("job") == key):
            release(run_dir)
            state = "a finished run" if (run_dir / "results.json").is_file() else "an unfinished run"
            raise ConfigError(f"run dir {run_dir} already holds {state} (see its run.json and checkpoints/); "
                              f"continue it with trainer.resume=auto, or choose another hydra.run.dir")
    elif not continuing and save_hydra_files is not None:
        save_hydra_files(run_dir)
    record = {"job": key, "pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:], "continued": continuing}
    record_path.write_text(json.dumps(record, indent=2))
    if key is not None and not is_restart(env):
        # The stamp is the part of the default name that a restart could not recompute.
        stamp = _stamp_of(run_dir)
        if stamp is not None:
            JOB_INDEX.mkdir(parents=True, exist_ok=True)
            _index_file(key).write_text(json.dumps({"stamp": stamp, "run_dir": str(run_dir)}))
    return continuing


def _read_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _stamp_of(run_dir: Path):
    """`<date>/<time>-<token>` when `run_dir` has the default layout outputs/<date>/<time>-<token>_<...>."""
    match = DEFAULT_LAYOUT.search(run_dir.as_posix())
    return f"{match.group(1)}/{match.group(2)}" if match else None


def save_hydra_files(run_dir, cfg, hydra_cfg) -> None:
    """What Hydra writes to `<run dir>/.hydra/` (hydra.output_subdir is null: it is written here, after the checks)."""
    from omegaconf import OmegaConf

    directory = Path(run_dir) / ".hydra"
    directory.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, directory / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), directory / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), directory / "overrides.yaml")


def continue_command(run_dir, overrides, env=os.environ) -> str:
    """The command that continues this run: the same overrides, this run dir, trainer.resume=auto."""
    kept = [o for o in overrides if not o.startswith(("hydra.run.dir=", "trainer.resume="))]
    args = " ".join(shlex.quote(a) for a in [*kept, f"hydra.run.dir={Path(run_dir).resolve()}", "trainer.resume=auto"])
    world, local = int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_WORLD_SIZE", 1))
    if world == 1:
        return f"python train.py {args}"
    if world == local:
        return f"torchrun --standalone --nproc_per_node={local} train.py {args}"
    return f"torchrun <the same --nnodes/--rdzv options> --nproc_per_node={local} train.py {args}"
