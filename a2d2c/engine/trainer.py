"""The training loop: one Trainer for every task.

build.py makes the run's parts from the config; the Trainer loops over them: epochs of updates
(accumulation, precision, gradient clipping, LR and τ schedules, EMA), evaluation, checkpoints,
logging, preemption. The task (engine/tasks/base.py) owns the model, the data, the loss and the metrics.
"""
import json
import logging
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from a2d2c.checkpoint import files as ckpt
from a2d2c.checkpoint.run_state import resume_run, save_run_checkpoint
from a2d2c.config_checks import unverified_recipe_line
from a2d2c.distributed import process_group as distributed
from a2d2c.engine.attention_monitor import AttentionMonitor
from a2d2c.engine.build import build_run
from a2d2c.engine.divergence import DivergenceGuard
from a2d2c.engine.preemption import Preempted, PreemptionNotice
from a2d2c.layers import set_temperature
from a2d2c.tracking.loggers import JsonlWriter
from a2d2c.tracking.meters import MetricLogger, SmoothedValue

log = logging.getLogger(__name__)

# Under DDP the stop flag is all-reduced every this many updates, not every update: a collective
# plus a host read per step would stall the GPU queue. Preemption grace periods are far longer.
STOP_CHECK_EVERY = 10


class Trainer:
    """Loops over the parts `build_run` made (engine/build.py), which become its attributes:
    self.model, self.optimizer, self.train_loader, self.task, ... (see RunParts)."""

    def __init__(self, cfg: DictConfig, output_dir, continue_job: bool = False):
        """`continue_job`: this process restarts a job (a SLURM requeue, a torchrun restart) whose run dir
        is `output_dir`; it resumes from the newest valid checkpoint there, if any, as trainer.resume=auto."""
        vars(self).update(vars(build_run(cfg)))
        self.output_dir = Path(output_dir)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer updates completed
        self.batches_done = 0  # micro-batches of epoch `self.epoch` consumed (non-zero after a mid-epoch resume)
        self.skipped_steps = 0  # updates skipped for a non-finite loss (trainer.skip_nonfinite)
        self.divergence = DivergenceGuard(cfg.trainer.skip_nonfinite, self.dist.world_size, self.device)
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
        if cfg.trainer.resume or continue_job:
            resume_run(self, cfg.trainer.resume or "auto", asked=bool(cfg.trainer.resume))
        self._open_trackers()
        self.attention = AttentionMonitor.from_config(self.model, cfg.trainer.get("attention"),
                                                      pictures=self.tracker is not None)

    # ----------------------------------------------------------------------------------- setup
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

    def _stop_requested(self, every: int = 1) -> bool:
        return self.preemption.stop_requested(self.dist.world_size, self.device, self.step, every)

    def train_one_epoch(self, epoch: int) -> dict:
        self.train_model.train()
        first = self.batches_done  # > 0 when resuming mid-epoch: replay the rest of the epoch only
        self.train_loader.start_epoch(epoch, skip_samples=first * self.batching.per_device_batch)
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
        with self.attention.watching():  # the attention layers observed (engine/attention_monitor.py)
            results = self.task.evaluate(self.eval_model, self.eval_loader, self.device, self.amp_dtype,
                                         self.memory_format)
        metrics = {f"{split}/{k}": v for k, v in results.items()}
        annealed = self.anneal is None or self.epoch + 1 >= self.anneal.epochs  # τ at its end by this evaluation
        metrics.update(self.attention.metrics(annealed, self.dist.is_main))
        if self.tracker is not None:
            self.tracker.log_images("attention_maps", self.attention.pictures(), step=self.step)
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
        """Write this point of the run (checkpoint/run_state.py); returns the numbered checkpoint's path."""
        return save_run_checkpoint(self, metrics, is_best)

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
