"""What the launcher (torchrun or SLURM) tells a process, readable before torch is imported.

Hydra composes the config, and names the run directory, on every rank separately; these helpers
let every rank of a job agree on that directory and let rank 0 alone write the shared files.
"""
import functools
import os
import random
import re
from datetime import datetime, timedelta


def first_hostname(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[07-08,10],cpu1" -> "gpu07" (as `scontrol show hostnames`)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    prefix, ranges = match.group(1), match.group(2)
    return prefix if ranges is None else prefix + ranges.split(",")[0].split("-")[0]


def slurm_environment(env=os.environ) -> dict:
    """torch.distributed's env:// variables derived from a multi-task SLURM step, or {} outside one.

    MASTER_ADDR is the job's first node; MASTER_PORT is drawn from the job id (unless set), so every
    task of the job agrees on both without talking to the others.
    """
    if "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", 1)) < 2:
        return {}
    master_port = env.get("MASTER_PORT") or str(random.Random(env.get("SLURM_JOB_ID", "0")).randint(20000, 60000))
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_hostname(env.get("SLURM_JOB_NODELIST", "localhost")),
        "MASTER_PORT": master_port,
    }


def env_rank(env=os.environ) -> int:
    """This process's rank before any process group exists (0 for a single process)."""
    if "RANK" in env:
        return int(env["RANK"])
    return int(env["SLURM_PROCID"]) if int(env.get("SLURM_NTASKS", 1)) > 1 and "SLURM_PROCID" in env else 0


@functools.cache
def job_start_time() -> datetime:
    """When the job started, the same on every rank: rank 0's clock, shared through torchrun's store.

    With Hydra's `${now:...}` two ranks that start a second apart would name two run directories;
    configs/hydra/output uses `${start_time:...}` instead. (SLURM sweeps need nothing: the submitit
    launcher resolves the sweep dir once and ships it to every task.)
    """
    now = datetime.now()
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world < 2 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return now
    from torch.distributed import TCPStore

    # torchrun's agent hosts a key-value store at MASTER_ADDR:MASTER_PORT for its workers.
    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                     timeout=timedelta(minutes=5))
    key = f"a2d2c/job_start_time/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if int(os.environ["RANK"]) == 0:
        store.set(key, now.isoformat())
    return datetime.fromisoformat(store.get(key).decode())


def register_start_time_resolver():
    """`${start_time:%Y-%m-%d}`: Hydra's `${now:...}` with one time for all ranks of a job."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # the layers, models and scripts/benchmark.py run without the config stack
        return

    OmegaConf.register_new_resolver("start_time", lambda pattern: job_start_time().strftime(pattern),
                                    use_cache=True, replace=True)
