"""a2d2c: a research training codebase for dynamic convolution (static, DyConv, A2D2C, A2D2C+)."""

__version__ = "0.1.0"

from a2d2c.cli.run_dir import register_run_stamp_resolver
from a2d2c.distributed.launch_env import register_start_time_resolver

# configs/hydra/output names run dirs with ${run_stamp:} and sweep dirs with ${start_time:...};
# registered on import, so any composition of the configs (train.py, hydra's compose API, a job
# unpickled on a SLURM node) can resolve them.
register_start_time_resolver()
register_run_stamp_resolver()
