"""Process-group helpers. One process is the non-distributed special case of everything here.

A job's processes come from `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT)
or from SLURM itself (`srun`, or hydra-submitit-launcher with `tasks_per_node` = GPUs), in which
case each task derives its rank from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID. Without either we
run a single process and no process group is created.
"""
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

from a2d2c.distributed.launch_env import slurm_environment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` picks this process's GPU when CUDA is present, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group described by the torchrun (or SLURM) environment, if there is one.

    NCCL (plus gloo for CPU tensors) on GPUs, gloo on CPUs; the rendezvous is env:// (MASTER_ADDR / MASTER_PORT).
    """
    if "RANK" not in os.environ:
        os.environ.update(slurm_environment())
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if info.world_size > 1 and info.rank == 0 and restarts_share_a_stale_store():
        log.warning("torchrun may restart these workers (--max-restarts > 0) but shares one rendezvous store across "
                    "attempts: a restarted rank can read a dead rank's address and fail to connect. Launch torchrun "
                    "with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment (scripts/*.sh and *.sbatch do).")
    if info.world_size > 1 and not dist.is_initialized():
        device = resolve_device(device_name, info.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # On GPUs, NCCL for CUDA tensors and gloo for the few CPU ones (meters, RNG states): NCCL alone
        # refuses CPU tensors.
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return info


def restarts_share_a_stale_store() -> bool:
    """Whether torchrun will restart workers onto the store of the previous attempt.

    torchrun's agent hosts one TCPStore for all rendezvous rounds and the workers' process-group keys carry no
    round prefix, so after a restart gloo/NCCL can read the dead attempt's addresses (connection refused, at
    random). TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 makes every round start a fresh store on rank 0.
    """
    may_restart = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0
    return may_restart and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    return not is_distributed() or dist.get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; returns the tensor for chaining."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj):
    """A list with every rank's `obj`, in rank order."""
    if not is_distributed():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_buffers(module: nn.Module, src: int = 0):
    """Copy rank `src`'s buffers (BatchNorm running statistics and the like) to every rank."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


def barrier():
    if is_distributed():
        dist.barrier()


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm with statistics over the global batch, for CPU (gloo) jobs.

    torch.nn.SyncBatchNorm only runs on GPUs. This computes the same function: the per-channel sum,
    sum of squares and count are summed over ranks with a differentiable all-reduce, so the
    gradients flow through the global statistics as well. Outside DDP training it is BatchNorm.
    """

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {x.dim()}-D)")

    def forward(self, x):
        if not (self.training and is_distributed()):
            return super().forward(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        count = torch.full((1,), x.numel() // channels, dtype=torch.float64)
        local = torch.cat([x.double().sum(dims), (x.double() ** 2).sum(dims), count])
        total = differentiable_all_reduce(local)
        n = total[-1]
        mean = total[:channels] / n
        var = total[channels:2 * channels] / n - mean ** 2
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), momentum)
        shape = (1, channels) + (1,) * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        y = (x - mean.to(x.dtype).view(shape)) * scale.view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `model` normalises over the global batch: torch's SyncBatchNorm on GPUs, else GlooSyncBatchNorm."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_to_gloo_sync(model)


def _convert_to_gloo_sync(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        synced = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
        # The BN's own device and dtype, before the values are copied: a float64 model stays float64.
        like = next((t for t in module.state_dict().values() if t.is_floating_point()), None)
        if like is not None:
            synced.to(device=like.device, dtype=like.dtype)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _convert_to_gloo_sync(child))
    return module
