"""From config to finished run: build.py makes the run's parts, trainer.py loops over them,
tasks/ says what is trained (the Task interface and its implementations), evaluation.py scores a
saved checkpoint; beside them the schedules and guards the loop uses.

Nothing is imported here, so `a2d2c.config_checks` (torch-free, run before anything is built) can
read engine/batch_scaling.py's rules without loading torch.
"""
