"""Running statistics for the training loop, after torchvision's references/classification/utils.py."""
from collections import defaultdict, deque

import torch

from a2d2c.distributed.process_group import all_reduce_sum


def _to_float(value) -> float:
    return value.item() if isinstance(value, torch.Tensor) else float(value)


class SmoothedValue:
    """A window median/average for display plus an exact global average for reporting."""

    def __init__(self, window_size: int = 20, fmt: str = "{median:.4f}"):
        self.window = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt

    def update(self, value, n: int = 1):
        """`value` is a number or a 0-d tensor; a tensor stays on its device until the meter is read,
        so updating every step never waits for the GPU (reading it, at log intervals, does)."""
        if isinstance(value, torch.Tensor):
            value = value.detach().reshape(()).double()
        self.window.append(value)
        self.count += n
        self.total = self.total + value * n

    def _floats(self):
        return [_to_float(v) for v in self.window]

    def synchronize_between_processes(self):
        """Make `global_avg` the average over all ranks (the window stays local)."""
        stats = all_reduce_sum(torch.tensor([self.count, _to_float(self.total)], dtype=torch.float64))
        self.count, self.total = int(stats[0].item()), stats[1].item()

    @property
    def median(self) -> float:
        return torch.tensor(self._floats()).median().item() if self.window else float("nan")

    @property
    def avg(self) -> float:
        return sum(self._floats()) / len(self.window) if self.window else float("nan")

    @property
    def global_avg(self) -> float:
        return _to_float(self.total) / self.count if self.count else float("nan")

    @property
    def value(self) -> float:
        return _to_float(self.window[-1]) if self.window else float("nan")

    def __str__(self):
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, value=self.value)


class MetricLogger:
    """A named set of SmoothedValues; `str()` is the one-line summary shown in the progress bar."""

    def __init__(self, window_size: int = 20):
        self.meters = defaultdict(lambda: SmoothedValue(window_size))

    def add_meter(self, name: str, meter: SmoothedValue):
        self.meters[name] = meter

    def update(self, n: int = 1, **values):
        for name, value in values.items():
            self.meters[name].update(value, n)

    def synchronize_between_processes(self):
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def global_averages(self) -> dict:
        return {name: meter.global_avg for name, meter in self.meters.items()}

    def __str__(self):
        return "  ".join(f"{name} {meter}" for name, meter in self.meters.items())
