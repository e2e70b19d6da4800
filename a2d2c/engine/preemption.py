"""Preemption: SLURM's notice before it kills a job (SIGTERM, or SIGUSR1 with `--signal`) becomes a
flag that the training loop reads between updates; it then saves a checkpoint and raises Preempted."""
import signal
import threading

import torch

from a2d2c.distributed.process_group import all_reduce_sum

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised after a preemption signal once the checkpoint is saved; train.py says how to continue and
    exits with 128 + signal."""

    def __init__(self, signum: int, checkpoint):
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"received {signal.Signals(signum).name}: saved {checkpoint}")


class PreemptionNotice:
    """While entered, SIGTERM/SIGUSR1 only record themselves in `signum`; the previous handlers come back on exit."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            self._previous = {s: signal.signal(s, self._record) for s in PREEMPTION_SIGNALS}
        return self

    def _record(self, signum, frame):
        self.signum = signum

    def stop_requested(self, world_size: int, device, step: int, every: int = 1) -> bool:
        """Whether this job stops now. Every rank must stop at the same update (checkpointing is
        collective): any rank's signal stops all, checked over ranks only every `every` updates."""
        flag = self.signum is not None
        if world_size > 1:
            if step % every:
                return False
            flag = all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0
        return flag

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
