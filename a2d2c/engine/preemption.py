"""Preemption: SLURM's notice before it kills a job (SIGTERM, or SIGUSR1 with `--signal`) becomes a
flag that the training loop reads between updates; it then saves a checkpoint and raises Preempted."""
import signal
import threading

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

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
