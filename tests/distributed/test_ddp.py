"""DDP through torchrun on CPU (gloo): one run per job, exact evaluation, the 1-process loss curve, SLURM ranks."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from a2d2c.checkpoint import files as ckpt
from a2d2c.engine.batch_scaling import batch_scaling
from a2d2c.errors import ConfigError
from a2d2c.distributed.launch_env import env_rank, slurm_environment
from helpers.train_utils import run_script

TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
# A model without dropout (its masks differ per rank) on data whose augmentation is seeded per sample.
# ResNet-10 (not MobileNetV2, whose float32 gradients at 8x8 are off by ~0.2% from float64 ones in one
# process already, which training then amplifies) with SGD (Adam turns rounding in near-zero gradients
# into full-size steps), at an LR that fits the 64 samples without chaos: at lr 0.05 the loss fell from
# 2.46 to 0.15 in 12 updates and rounding grew from 3e-7 (epoch 1) to 3e-3 (epoch 2) on an AVX-512 CPU.
SMALL = ("backbone=resnet10", "backbone.dropout=0.0", "conv=dynamic", "dataset=synthetic", "dataset.image_size=8",
         "dataset.stem=cifar", "dataset.num_classes=10", "optimizer=sgd", "optimizer.lr=0.02",
         "trainer.progress_bar=false")


def test_torchrun_leaves_one_run_dir_one_checkpoint_set_one_wandb_run_and_eval_agrees(tmp_path):
    # Microseconds in the dir name: with Hydra's ${now:...} the two ranks would name two dirs.
    proc = run_script(*TORCHRUN, "train.py", "backbone=resnet10", "conv=static", "trainer.epochs=2",
                      "trainer.per_device_batch_size=16", "trainer.lr_scaling.rule=linear",
                      "trainer.lr_scaling.base_batch_size=64", "trainer.progress_bar=false",
                      f"hydra.run.dir={tmp_path}/run_${{start_time:%H-%M-%S-%f}}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = list(tmp_path.glob("run_*"))
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    checkpoints = list(tmp_path.rglob("*.pt"))
    assert {p.parent for p in checkpoints} == {run_dir / "checkpoints"}  # one set, written by rank 0
    assert {"best.pt", "last.pt"} <= {p.name for p in checkpoints}
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, offline_runs
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2
    # Global batch 16 × 2 processes; linear LR scaling from 64 to 32 halves the configured LR.
    assert results["batch"] == {"per_device_batch": 16, "accum_steps": 1, "world_size": 2, "global_batch": 32,
                                "lr_rule": "linear", "base_batch_size": 64, "base_lr": 0.002, "lr": 0.001}
    assert results["final"]["test/samples"] == 360  # digits' test split, each image once
    assert results["best"]["test/top1"] > 50

    eval_dir = tmp_path / "eval"
    proc = run_script("eval.py", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", f"hydra.run.dir={eval_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((eval_dir / "results.json").read_text())["metrics"]
    assert evaluated["samples"] == 360
    assert evaluated["top1"] == results["best"]["test/top1"] and evaluated["top5"] == results["best"]["test/top5"]


def train_curve(tmp_path, name, *launcher_and_overrides):
    run_dir = tmp_path / name
    proc = run_script(*launcher_and_overrides, *SMALL, "dataset.train_size=64", "dataset.eval_size=31",
                      "trainer.batch_size=16", "trainer.epochs=3", "logger=none", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "val/loss" in r]
    weights = ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    return [(r["train/loss"], r["val/loss"]) for r in epochs], weights


# Two processes sum in a different order than one: the curves agree to float32 rounding, amplified
# over 12 updates. With torch 2.14.1 (CPU, lr 0.02) the largest differences measured were 1.5e-7 in
# a loss and 3.2e-7 in a weight. Without SyncBN the training loss is off by 0.41 (each rank
# normalises over 8): the tolerances sit far from both.
LOSS_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = 1e-3


def test_two_processes_with_sync_bn_follow_the_one_process_loss_curve(tmp_path):
    one, one_weights = train_curve(tmp_path, "one", "train.py")
    two, two_weights = train_curve(tmp_path, "two", *TORCHRUN, "train.py", "trainer.sync_bn=true")
    assert len(one) == len(two) == 3
    for (train_1, val_1), (train_2, val_2) in zip(one, two):
        assert train_2 == pytest.approx(train_1, abs=LOSS_TOLERANCE)
        assert val_2 == pytest.approx(val_1, abs=LOSS_TOLERANCE)
    worst = max((one_weights[k].float() - two_weights[k].float()).abs().max().item() for k in one_weights)
    assert worst < WEIGHT_TOLERANCE
    # The same run without SyncBN: per-rank statistics over 8 samples take it off the curve.
    unsynced, _ = train_curve(tmp_path, "unsynced", *TORCHRUN, "train.py", "trainer.sync_bn=false")
    assert max(abs(a[0] - b[0]) for a, b in zip(one, unsynced)) > 10 * LOSS_TOLERANCE


def trainer_cfg(**values):
    base = {"batch_size": 64, "per_device_batch_size": None, "accum_steps": 1,
            "lr_scaling": {"rule": "none", "base_batch_size": 256}}
    return OmegaConf.create({**base, **values})


@pytest.mark.parametrize("values, world, expected", [
    ({}, 4, (16, 64, 0.1)),
    ({"per_device_batch_size": 32, "lr_scaling": {"rule": "linear", "base_batch_size": 256}}, 8, (32, 256, 0.1)),
    ({"per_device_batch_size": 32, "lr_scaling": {"rule": "linear", "base_batch_size": 128}}, 8, (32, 256, 0.2)),
    ({"batch_size": 1024, "accum_steps": 2, "lr_scaling": {"rule": "sqrt", "base_batch_size": 256}}, 8, (64, 1024, 0.2)),
])
def test_batch_scaling_derives_per_device_and_global_batch_and_the_lr(values, world, expected):
    scaling = batch_scaling(trainer_cfg(**values), world, base_lr=0.1)
    assert (scaling.per_device_batch, scaling.global_batch) == expected[:2]
    assert scaling.lr == pytest.approx(expected[2])
    assert scaling.per_device_batch * world * scaling.accum_steps == scaling.global_batch


@pytest.mark.parametrize("values, world, fragment", [
    ({"batch_size": 30}, 4, "trainer.batch_size=30"),
    ({"lr_scaling": {"rule": "quadratic", "base_batch_size": 256}}, 1, "none, linear, sqrt"),
    ({"per_device_batch_size": 0}, 2, "trainer.per_device_batch_size=0"),
])
def test_bad_batch_settings_raise_one_line_config_errors(values, world, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        batch_scaling(trainer_cfg(**values), world, base_lr=0.1)


def test_slurm_tasks_derive_rank_world_size_and_master_from_the_slurm_environment(monkeypatch):
    env = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
           "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]",
           "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_TASKS_PER_NODE": "4(x2)"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    derived = slurm_environment(env)
    assert derived["RANK"] == "5" and derived["WORLD_SIZE"] == "8" and derived["LOCAL_RANK"] == "1"
    assert derived["MASTER_ADDR"] == "gpu07"
    assert 20000 <= int(derived["MASTER_PORT"]) <= 60000
    assert slurm_environment({**env, "SLURM_PROCID": "0"})["MASTER_PORT"] == derived["MASTER_PORT"]  # every task agrees
    assert env_rank(env) == 5
    # A single-task step (or torchrun inside an allocation, which sets RANK itself) is left alone.
    assert slurm_environment({**env, "SLURM_NTASKS": "1"}) == {}
    assert env_rank({**env, "RANK": "2"}) == 2


def test_sync_bn_on_cpu_is_batch_norm_outside_ddp():
    from a2d2c.distributed.process_group import GlooSyncBatchNorm, convert_sync_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    reference.load_state_dict(model.state_dict())
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(converted[1], GlooSyncBatchNorm)
    assert converted.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(5, 3, 6, 6)
    torch.testing.assert_close(converted(x), reference(x))
    torch.testing.assert_close(converted[1].running_var, reference[1].running_var)


@pytest.mark.parametrize("env, stale", [
    ({"TORCHELASTIC_MAX_RESTARTS": "2", "TORCHELASTIC_USE_AGENT_STORE": "True"}, True),
    ({"TORCHELASTIC_MAX_RESTARTS": "2", "TORCHELASTIC_USE_AGENT_STORE": "False"}, False),  # the opt-out
    ({"TORCHELASTIC_MAX_RESTARTS": "0", "TORCHELASTIC_USE_AGENT_STORE": "True"}, False),   # never restarts
    ({}, False),                                                                           # not torchrun
])
def test_restarts_onto_a_shared_rendezvous_store_are_detected(monkeypatch, env, stale):
    from a2d2c.distributed.process_group import restarts_share_a_stale_store
    for key in ("TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert restarts_share_a_stale_store() is stale
