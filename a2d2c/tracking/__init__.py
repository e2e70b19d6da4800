"""Where a run reports as it goes: metrics.jsonl and wandb (loggers.py), and smoothed meters (meters.py)."""
