"""MetricLogger keeps tensor values on their device until read (no host sync per training step)."""
import pytest
import torch

from a2d2c.tracking.meters import MetricLogger


def test_tensor_updates_stay_tensors_until_read_and_average_exactly():
    meters = MetricLogger(window_size=2)
    for value in (1.0, 2.0, 6.0):
        meters.update(n=2, loss=torch.tensor(value), lr=0.1)
    loss = meters.meters["loss"]
    assert isinstance(loss.total, torch.Tensor) and all(isinstance(v, torch.Tensor) for v in loss.window)
    assert loss.global_avg == pytest.approx(3.0)  # (1 + 2 + 6) * 2 / 6
    assert loss.avg == pytest.approx(4.0) and loss.value == 6.0  # the window holds the last two
    assert meters.meters["lr"].global_avg == pytest.approx(0.1)
    meters.synchronize_between_processes()  # one process: totals become plain numbers, unchanged
    assert meters.global_averages() == pytest.approx({"loss": 3.0, "lr": 0.1})
    assert str(meters) == "loss 2.0000  lr 0.1000"  # window medians (torch's lower median of 2 and 6)
