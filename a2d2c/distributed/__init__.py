"""Processes: the process group and its collectives (process_group.py), and what the launcher
(torchrun, SLURM) says about this job (launch_env.py)."""
