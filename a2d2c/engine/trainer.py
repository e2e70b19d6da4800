"""The training loop: one Trainer for every task.

The Trainer owns what is the same for every task — devices and DDP, precision, the optimizer,
LR and temperature schedules, EMA, checkpoints, logging. The task (see classification.py)
owns the model, the loss and the evaluation.
"""
import copy
import json
import logging
import math
import signal
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3, random_seed
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from a2d2c.data import build_eval_loader, build_train_loader
from a2d2c.data.aspect_ratio import build_grouped_train_loader
from a2d2c.data.class_map import apply_class_map, check_num_classes, dataset_class_map
from a2d2c.engine.divergence import DivergenceGuard
from a2d2c.engine.preemption import Preempted, PreemptionNotice
from a2d2c.engine.run_state import capture_run_state, resume_run
from a2d2c.engine.temperature_schedule import plan_temperature
from a2d2c.layers import set_temperature
from a2d2c.utils import checkpoint as ckpt
from a2d2c.utils import distributed
from a2d2c.utils.batch_scaling import batch_scaling
from a2d2c.utils.complexity import count_complexity
from a2d2c.utils.config_checks import check_train_config, unverified_recipe_line
from a2d2c.utils.errors import ConfigError
from a2d2c.utils.meters import MetricLogger, SmoothedValue
from a2d2c.utils.tracking import JsonlWriter

log = logging.getLogger(__name__)

AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Under DDP the stop flag is all-reduced every this many updates, not every update: a collective
# plus a host read per step would stall the GPU queue. Preemption grace periods are far longer.
STOP_CHECK_EVERY = 10


def amp_dtype_from_config(amp):
    if amp not in AMP_DTYPES:
        raise ConfigError(f"trainer.amp={amp!r} is not valid; use null (fp32), bf16 or fp16")
    return AMP_DTYPES[amp]


class Trainer:
    def __init__(self, cfg: DictConfig, output_dir, continue_job: bool = False):
        """`continue_job`: this process restarts a job (a SLURM requeue, a torchrun restart) whose run dir
        is `output_dir`; it resumes from the newest valid checkpoint there, if any, as trainer.resume=auto."""
        check_train_config(cfg)  # before anything is built or written: a bad value is one line, nothing lost
        self.cfg = cfg
        tcfg = cfg.trainer
        self.output_dir = Path(output_dir)
        self.dist = distributed.init_distributed(tcfg.device)
        self.device = distributed.resolve_device(tcfg.device, self.dist.local_rank)
        if not self.dist.is_main:
            logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the job
        random_seed(cfg.seed, self.dist.rank)
        if tcfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = not tcfg.deterministic
        self.amp_dtype = amp_dtype_from_config(tcfg.amp)
        self.memory_format = torch.channels_last if tcfg.channels_last else torch.contiguous_format
        self.accum_steps = tcfg.accum_steps
        self.eval_split = cfg.dataset.eval_split

        self.task = instantiate(cfg.task)
        self.monitor = f"{self.eval_split}/{tcfg.monitor or self.task.primary_metric}"
        model = self.task.build_model()
        # Counted on a copy at batch size 1, so the run's own model and RNG stream are untouched.
        # A detector is counted on its backbone + FPN (task.complexity_module): its heads' cost depends on the weights.
        self.complexity = count_complexity(self.task.complexity_module(copy.deepcopy(model)).eval(),
                                           self.task.input_size(cfg.dataset.image_size))
        if tcfg.get("sync_bn") and self.dist.world_size > 1:
            model = distributed.convert_sync_batchnorm(model, self.device)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.ema = ModelEmaV3(self.model, decay=tcfg.ema.decay, use_warmup=tcfg.ema.use_warmup) if tcfg.ema.enabled else None
        self.batching = batch_scaling(tcfg, self.dist.world_size, cfg.optimizer.lr)
        self.optimizer = instantiate(cfg.optimizer, lr=self.batching.lr)(params=self.model.parameters())
        # timm schedulers in epoch units, stepped every update with the fractional epoch.
        self.scheduler = instantiate(cfg.scheduler)(optimizer=self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype is torch.float16 else None
        # τ (engine/temperature_schedule.py): annealed, or kept from dynamic starting weights; a static model has none.
        self.anneal, self.tau = plan_temperature(cfg, self.model, self.ema.module if self.ema is not None else None)
        self._build_loaders()

        # Evaluation bypasses DDP (each rank scores its own shard); training goes through it.
        self.eval_model = torch.compile(self.model) if tcfg.compile else self.model
        if self.dist.world_size > 1:
            ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.train_model = torch.compile(ddp) if tcfg.compile else ddp
        else:
            self.train_model = self.eval_model

        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer updates completed
        self.batches_done = 0  # micro-batches of epoch `self.epoch` consumed (non-zero after a mid-epoch resume)
        self.skipped_steps = 0  # updates skipped for a non-finite loss (trainer.skip_nonfinite)
        self.divergence = DivergenceGuard(tcfg.skip_nonfinite, self.dist.world_size, self.device)
        self.resume_history = []  # each resume of this run and the config changes it applied
        self.last_checkpoint = None  # the newest checkpoint this run wrote or resumed from
        self.preemption = PreemptionNotice()  # records SIGTERM/SIGUSR1 while fit() runs
        self.best = None
        self.wall_time_s = 0.0
        self.tracker_id = None
        self.last_metrics = {}
        self.train_samples, self.train_time_s = 0, 0.0
        if self.dist.is_main:  # the run dir is this process's (train.py holds its lock): nobody else writes there
            ckpt.remove_stale_temp_files(self.output_dir / "checkpoints")
        if tcfg.resume or continue_job:
            resume_run(self, tcfg.resume or "auto", asked=bool(tcfg.resume))
        self._open_trackers()

    # ----------------------------------------------------------------------------------- setup
    def _build_loaders(self):
        tcfg, dcfg, world = self.cfg.trainer, self.cfg.dataset, self.dist.world_size
        pin = self.device.type == "cuda"
        collate = self.task.collate_fn
        train_set = instantiate(dcfg.train)
        check_num_classes(train_set, dcfg.num_classes, "train")
        # The training split numbers the classes; the evaluation split (and eval.py, from the checkpoint) follows it.
        self.class_map = dataset_class_map(train_set)
        group_factor = dcfg.get("aspect_ratio_group_factor", -1)  # detection: batch images of similar shape
        make_loader = (partial(build_grouped_train_loader, group_factor=group_factor) if group_factor >= 0
                       else build_train_loader)
        self.train_loader = make_loader(train_set, self.batching.per_device_batch, self.dist,
                                        self.cfg.seed, dcfg.num_workers, pin, collate)
        self.updates_per_epoch = len(self.train_loader) // self.accum_steps
        if self.updates_per_epoch == 0:
            raise ConfigError(f"the global batch {self.batching.global_batch} is larger than the {len(train_set)} "
                              f"training samples; lower trainer.batch_size")
        eval_batch = max(1, (tcfg.eval_batch_size or self.batching.global_batch) // world)
        eval_set = instantiate(dcfg.eval)
        apply_class_map(eval_set, self.class_map, f"the {dcfg.name} {dcfg.eval_split} split")
        self.eval_loader = build_eval_loader(eval_set, eval_batch, self.dist, dcfg.num_workers, pin, collate)

    def _open_trackers(self):
        self.metrics_file, self.tracker = None, None
        if not self.dist.is_main:
            return
        self.metrics_file = JsonlWriter(self.output_dir / "metrics.jsonl")
        if self.cfg.logger is not None:
            resolved = OmegaConf.to_container(self.cfg, resolve=True)
            # Through a partial, so the config dict reaches wandb as plain data, not as nodes to instantiate.
            make_tracker = instantiate(self.cfg.logger, _partial_=True)
            self.tracker = make_tracker(dir=str(self.output_dir), run_config=resolved, run_id=self.tracker_id)
            self.tracker_id = self.tracker.run_id

    def _log(self, record: dict):
        if self.metrics_file is not None:
            self.metrics_file.write(record)
        if self.tracker is not None:
            self.tracker.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    # ------------------------------------------------------------------------------------ loop
    def fit(self) -> dict:
        epochs = self.cfg.trainer.epochs
        log.info("%s/%s on %s: %.2fM params, %.1fM MAdds; %d updates/epoch on %s (world size %d)",
                 self.cfg.backbone.name, self.cfg.conv.type, self.cfg.dataset.name, self.complexity["params"] / 1e6,
                 self.complexity["macs"] / 1e6, self.updates_per_epoch, self.device, self.dist.world_size)
        unverified = unverified_recipe_line(self.cfg)
        if unverified and self.dist.is_main:
            log.warning(unverified)
        start = time.perf_counter()
        wall_before = self.wall_time_s
        metrics = self.last_metrics
        try:
            with self.preemption:  # SIGTERM/SIGUSR1 set a flag the loop reads between updates
                while self.epoch < epochs:
                    train_metrics = self.train_one_epoch(self.epoch)
                    eval_metrics, eval_time = self._timed(self.evaluate)
                    self.epoch += 1
                    self.wall_time_s = wall_before + time.perf_counter() - start
                    metrics = {"epoch": self.epoch, "step": self.step, **train_metrics, **eval_metrics,
                               "eval_img_per_s": eval_metrics[f"{self.eval_split}/samples"] / eval_time}
                    is_best = self._update_best(metrics)
                    self._log(metrics)
                    self.last_metrics = metrics
                    self.save_checkpoint(metrics, is_best)
                    log.info("epoch %d/%d  train loss %.4f  %s %.2f (best %.2f @ %d)  lr %.3g  tau %s  %.0fs",
                             self.epoch, epochs, train_metrics["train/loss"], self.monitor, metrics[self.monitor],
                             self.best[self.monitor], self.best["epoch"], train_metrics["lr"],
                             "-" if self.tau is None else f"{self.tau:.2f}", self.wall_time_s)
                    if self._stop_requested():  # the signal came during evaluation: that checkpoint is the one
                        raise Preempted(self.preemption.signum or signal.SIGTERM, self.last_checkpoint)
                return self._write_results(metrics)
        finally:
            self._close()

    # ------------------------------------------------------------------------------ preemption
    def _stop_requested(self, every: int = 1) -> bool:
        # Every rank must stop at the same update (checkpointing is collective): any rank's signal stops all.
        flag = self.preemption.signum is not None
        if self.dist.world_size > 1:
            if self.step % every:
                return False
            flag = distributed.all_reduce_sum(torch.tensor([float(flag)], device=self.device)).item() > 0
        return flag

    def train_one_epoch(self, epoch: int) -> dict:
        self.train_model.train()
        # With aspect-ratio grouping the batch sampler owns the epoch's order; else the sampler does.
        batch_sampler = self.train_loader.batch_sampler
        order = batch_sampler if hasattr(batch_sampler, "set_epoch") else self.train_loader.sampler
        order.set_epoch(epoch)
        first = self.batches_done  # > 0 when resuming mid-epoch: replay the rest of the epoch only
        order.skip(first * self.batching.per_device_batch)
        tcfg = self.cfg.trainer
        every = tcfg.checkpoint_every_steps or 0
        meters = MetricLogger()
        meters.add_meter("lr", SmoothedValue(1, "{value:.3g}"))
        meters.add_meter("img/s", SmoothedValue(10, "{avg:.0f}"))
        micro_batches = self.updates_per_epoch * self.accum_steps  # an incomplete accumulation group is dropped
        bar = tqdm(total=micro_batches, desc=f"epoch {epoch + 1}/{self.cfg.trainer.epochs}", unit="it",
                   disable=not (self.dist.is_main and self.cfg.trainer.progress_bar), dynamic_ncols=True, leave=False)
        bar.update(first)
        tic = epoch_start = time.perf_counter()
        samples = 0
        group_is_finite = True  # False once a micro-batch of the current accumulation group had a non-finite loss
        for i, batch in enumerate(self.train_loader, start=first):
            if i == micro_batches:
                break
            update_in_epoch, micro = divmod(i, self.accum_steps)
            if micro == 0:
                self._apply_schedules(epoch + update_in_epoch / self.updates_per_epoch)
            batch = self.task.move_batch(batch, self.device, self.memory_format)
            is_last_micro = micro == self.accum_steps - 1
            # DDP: reduce gradients only on the last micro-batch of an accumulation group.
            sync = nullcontext() if is_last_micro or self.dist.world_size == 1 else self.train_model.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    loss, step_metrics = self.task.training_step(self.train_model, batch)
                finite = self.divergence.loss_is_usable(loss, epoch, i, self.step + 1)
                if finite:
                    loss = loss / self.accum_steps
                    (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            group_is_finite &= finite
            if is_last_micro:
                stepped, group_is_finite = group_is_finite, True
                if stepped:
                    self._optimizer_step()
                else:  # trainer.skip_nonfinite: drop the whole accumulation group's gradients
                    self.optimizer.zero_grad(set_to_none=True)
                    self.skipped_steps += 1
                self.batches_done = i + 1
                if i + 1 < micro_batches:  # the end-of-epoch checkpoint follows evaluation, in fit()
                    if self._stop_requested(every=STOP_CHECK_EVERY):
                        raise Preempted(self.preemption.signum or signal.SIGTERM, self.save_checkpoint(self.last_metrics, False))
                    if every and stepped and self.step % every == 0:
                        self.save_checkpoint(self.last_metrics, False)
            batch_size = self.task.batch_size(batch) * self.dist.world_size
            samples += batch_size
            toc = time.perf_counter()
            if finite:  # a skipped batch's NaN would poison the epoch's average loss
                meters.update(n=batch_size, **{f"train/{k}": v for k, v in step_metrics.items()})
            meters.update(lr=self.optimizer.param_groups[0]["lr"], **{"img/s": batch_size / (toc - tic)})
            tic = toc
            bar.update()
            if (i + 1) % self.cfg.trainer.log_every == 0 or i + 1 == micro_batches:
                self.divergence.check(self.last_checkpoint)
                bar.set_postfix_str(str(meters), refresh=False)
                if is_last_micro:
                    self._log({"step": self.step, "epoch": epoch + update_in_epoch / self.updates_per_epoch,
                               "train/loss": meters.meters["train/loss"].avg, "lr": meters.meters["lr"].value,
                               "train/img_per_s": meters.meters["img/s"].avg,
                               **({"temperature": self.tau} if self.tau is not None else {})})
        bar.close()
        self.batches_done = 0
        elapsed = time.perf_counter() - epoch_start
        self.train_samples += samples
        self.train_time_s += elapsed
        meters.synchronize_between_processes()
        averages = meters.global_averages()
        return {"train/loss": averages.get("train/loss", math.nan), "lr": self.optimizer.param_groups[0]["lr"],
                "train_img_per_s": samples / elapsed, **({"temperature": self.tau} if self.tau is not None else {}),
                **({"train/skipped_steps": self.skipped_steps} if self.skipped_steps else {})}

    def _apply_schedules(self, epoch: float):
        self.scheduler.step(epoch)
        anneal = self.anneal
        if anneal is not None:
            # In epochs, like the LR: a resume with another batch size (so another number of updates
            # per epoch) continues the same curve.
            self._set_temperature(anneal.at(epoch))

    def _set_temperature(self, tau: float):
        # The EMA copy is a separate module: its τ buffer is set too (its update would only average equal values).
        self.tau = tau
        set_temperature(self.model, tau)
        if self.ema is not None:
            set_temperature(self.ema.module, tau)

    def _optimizer_step(self):
        clip = self.cfg.trainer.clip_grad_norm
        if self.scaler is not None:
            if clip:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)

    def evaluate(self) -> dict:
        split = self.eval_split
        # BatchNorm running stats drift apart per rank after the last training step (DDP broadcasts
        # rank 0's buffers only before each forward); evaluate with, and save, the same ones everywhere.
        distributed.broadcast_buffers(self.model)
        if self.ema is not None:
            distributed.broadcast_buffers(self.ema.module)
        results = self.task.evaluate(self.eval_model, self.eval_loader, self.device, self.amp_dtype, self.memory_format)
        metrics = {f"{split}/{k}": v for k, v in results.items()}
        if self.ema is not None:
            ema_results = self.task.evaluate(self.ema.module, self.eval_loader, self.device, self.amp_dtype, self.memory_format)
            metrics.update({f"{split}_ema/{k}": v for k, v in ema_results.items()})
        return metrics

    @staticmethod
    def _timed(fn):
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    def _update_best(self, metrics: dict) -> bool:
        key = self.monitor
        if self.best is None or metrics[key] > self.best[key]:
            self.best = dict(metrics)
            return True
        return False

    # ------------------------------------------------------------------------- checkpoints, results
    def save_checkpoint(self, metrics: dict, is_best: bool):
        """Write `step-<step>.pt`, publish it as last.pt (and best.pt), keep the newest trainer.keep_last.

        Called at the end of an epoch (batches_done = 0) and, for recovery, between updates.
        Returns the numbered checkpoint's path.
        """
        self.divergence.check(self.last_checkpoint)
        self.divergence.check_weights(self.model, self.epoch, self.step, self.last_checkpoint)
        directory = self.output_dir / "checkpoints"
        path = ckpt.numbered_checkpoint_path(directory, self.step)
        rng = distributed.all_gather_object(ckpt.capture_rng_state())
        if not self.dist.is_main:
            self.last_checkpoint = path
            return path
        state = capture_run_state(self, metrics, rng)
        ckpt.save_checkpoint(state, path)
        ckpt.copy_checkpoint(path, directory / "last.pt")
        if is_best:
            ckpt.copy_checkpoint(path, directory / "best.pt")
        self.last_checkpoint = path  # only once it is on disk: error messages point users at it
        ckpt.prune_checkpoints(directory, self.cfg.trainer.keep_last)
        return path

    def _write_results(self, final: dict) -> dict:
        results = {
            "final": final,
            "best": self.best,
            "params": self.complexity["params"],
            "macs": self.complexity["macs"],
            "throughput": {"train_img_per_s": self.train_samples / self.train_time_s if self.train_time_s else None,
                           "eval_img_per_s": final.get("eval_img_per_s")},
            "wall_time_s": self.wall_time_s,
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "batch": self.batching.as_dict(),
            "resumed": self.resume_history,  # each resume: from which checkpoint, and the config changes applied
            "checkpoints": {name: str(self.output_dir / "checkpoints" / f"{name}.pt") for name in ("last", "best")},
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        if self.dist.is_main:
            with open(self.output_dir / "results.json", "w") as f:
                json.dump(results, f, indent=2)
            if self.tracker is not None:
                self.tracker.summary({f"best/{k}": v for k, v in (self.best or {}).items()}
                                     | {"params": results["params"], "macs": results["macs"]})
        return results

    def _close(self):
        if self.metrics_file is not None:
            self.metrics_file.close()
        if self.tracker is not None:
            self.tracker.finish()
        distributed.cleanup()
