"""What the training loop does about a NaN/inf loss: stop with one line, or skip the update.

``trainer.skip_nonfinite=false`` (default): losses are kept on the device and checked at the next
log step or checkpoint, so training never waits for the GPU to learn a loss value. The run stops
naming the first bad step and the last good checkpoint; a checkpoint is never written after it.
``trainer.skip_nonfinite=true``: deciding to skip needs the value before the update, a host read
per step; the update (the whole accumulation group) is dropped on every rank.
"""
import logging
import math

import torch

from a2d2c.distributed import process_group as distributed
from a2d2c.errors import ConfigError

log = logging.getLogger(__name__)


class NonFiniteLossError(ConfigError):
    """Training diverged (NaN/inf loss or weights). One line naming the step and the last good checkpoint."""


def _advice(last_checkpoint) -> str:
    return (f"the last good checkpoint is {last_checkpoint or 'none (no checkpoint written yet)'}; lower "
            f"optimizer.lr, enable trainer.clip_grad_norm, or set trainer.skip_nonfinite=true to skip such steps")


class DivergenceGuard:
    def __init__(self, skip: bool, world_size: int, device: torch.device):
        self.skip, self.world_size, self.device = skip, world_size, device
        self._unchecked = []  # (epoch, batch, step, loss on the device) since the last check

    def loss_is_usable(self, loss: torch.Tensor, epoch: int, batch: int, step: int) -> bool:
        """False only when skipping: this micro-batch's loss is NaN/inf on some rank."""
        if not self.skip:
            self._unchecked.append((epoch, batch, step, loss.detach()))
            return True
        bad = torch.tensor([0.0 if math.isfinite(loss.item()) else 1.0], device=self.device)
        if self.world_size > 1:  # all ranks skip together, or DDP's gradient reduction would hang
            distributed.all_reduce_sum(bad)
        if bad.item() == 0:
            return True
        log.warning("non-finite loss (%s) at epoch %d, step %d (batch %d of the epoch): update skipped",
                    loss.item(), epoch + 1, step, batch + 1)
        return False

    def check(self, last_checkpoint) -> None:
        """Raise if a loss since the last check was NaN/inf on any rank. Every rank calls it at the same
        points (log steps, checkpoints), so the all-reduce lines up."""
        if not self._unchecked:
            return
        pending, self._unchecked = self._unchecked, []
        bad = ~torch.isfinite(torch.stack([loss.float().reshape(()) for *_, loss in pending]))
        flag = bad.any().float().reshape(1)
        if self.world_size > 1:
            distributed.all_reduce_sum(flag)
        if flag.item() == 0:
            return
        local = bad.nonzero()
        if len(local):
            epoch, batch, step, loss = pending[local[0].item()]
            what = f"loss is {loss.item()} at epoch {epoch + 1}, step {step} (batch {batch + 1} of the epoch)"
        else:
            what = f"loss is not finite on another rank at or before step {pending[-1][2]}"
        raise NonFiniteLossError(f"{what}; {_advice(last_checkpoint)}")

    @staticmethod
    def check_weights(model: torch.nn.Module, epoch: int, step: int, last_checkpoint) -> None:
        """NaN weights never replace a good checkpoint (checked on every rank; each would raise alike)."""
        bad = [name for name, p in model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(f"weights are not finite at epoch {epoch + 1}, step {step} ({bad[0]} and "
                                     f"{len(bad) - 1} more); not saving over the last good checkpoint "
                                     f"{last_checkpoint or '(none written yet)'}; lower optimizer.lr or enable "
                                     f"trainer.clip_grad_norm")
