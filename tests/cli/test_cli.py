"""train.py and eval.py as a user runs them: what a run leaves, exact re-evaluation, one-line errors."""
import json
import re
import time

import pytest

from a2d2c.checkpoint import files as ckpt
from helpers.cli import assert_one_line_error
from helpers.train_utils import run_script


def check_run_outputs(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    for name in ("last", "best"):
        assert (run_dir / "checkpoints" / f"{name}.pt").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "test/top1" in r] == list(range(1, results["final"]["epoch"] + 1))
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("run-*.wandb"))
    for key in ("final", "best", "params", "macs", "throughput", "wall_time_s", "config"):
        assert key in results
    return results


def evaluate(checkpoint, out_dir):
    proc = run_script("eval.py", f"checkpoint={checkpoint}", f"hydra.run.dir={out_dir}")
    assert proc.returncode == 0, proc.stderr
    printed = re.search(r"top-1 ([\d.]+)\s+top-5 ([\d.]+)", proc.stdout)
    assert printed, proc.stdout
    return json.loads((out_dir / "results.json").read_text()), printed


@pytest.fixture(scope="module")
def static_run(tmp_path_factory):
    """A quick digits run from the command line (static convs, native 8x8 images, 2 epochs)."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    proc = run_script("train.py", "conv=static", "trainer.epochs=2", "dataset.image_size=8", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_train_cli_leaves_checkpoints_results_metrics_and_offline_wandb_run(static_run):
    results = check_run_outputs(static_run)
    assert results["config"]["conv"]["type"] == "static" and results["best"]["test/top1"] > 50
    state = ckpt.load_checkpoint(static_run / "checkpoints" / "last.pt")
    # The wandb run id is kept for resuming into the same run.
    assert state["wandb_run_id"] and list((static_run / "wandb").glob(f"offline-run-*-{state['wandb_run_id']}"))


def test_eval_cli_reproduces_the_best_test_accuracy_exactly(static_run, tmp_path):
    results, printed = evaluate(static_run / "checkpoints" / "best.pt", tmp_path / "eval")
    best = json.loads((static_run / "results.json").read_text())["best"]
    assert results["metrics"]["top1"] == best["test/top1"] and results["metrics"]["top5"] == best["test/top5"]
    assert float(printed.group(1)) == pytest.approx(best["test/top1"], abs=0.005)
    assert results["epoch"] == best["epoch"] and results["split"] == "test"


def test_resume_continues_the_same_wandb_run(static_run, tmp_path):
    first_id = ckpt.load_checkpoint(static_run / "checkpoints" / "last.pt")["wandb_run_id"]
    proc = run_script("train.py", "conv=static", "trainer.epochs=3", "dataset.image_size=8",
                      "trainer.resume_allow=[trainer.epochs]", f"trainer.resume={static_run / 'checkpoints' / 'last.pt'}", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["epoch"] == 3 and state["wandb_run_id"] == first_id


@pytest.mark.parametrize("override, fragments", [
    ("backbone=resnet81", ("unknown backbone 'resnet81'", "resnet18", "configs/backbone")),
    ("conv=dynamo", ("unknown conv 'dynamo'", "a2d2c_plus")),
    ("dataset=mnist", ("unknown dataset 'mnist'", "digits", "cifar100")),
    ("experiment=dyconv_imagenet_resnet81", ("unknown experiment", "dyconv_imagenet_resnet18_dynamic")),
])
def test_unknown_component_names_end_with_one_line(override, fragments, tmp_path):
    assert_one_line_error(run_script("train.py", override, f"hydra.run.dir={tmp_path}"), *fragments)


def test_unknown_name_inside_a_sweep_is_caught_too(tmp_path):
    proc = run_script("train.py", "-m", "conv=static,dinamic", f"hydra.sweep.dir={tmp_path}")
    assert_one_line_error(proc, "unknown conv 'dinamic'")


def test_missing_dataset_root_ends_with_one_line(tmp_path):
    proc = run_script("train.py", "dataset=cifar100", f"dataset.root={tmp_path / 'cifar'}", "logger=none",
                      f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(proc, str(tmp_path / "cifar"), "dataset.download=true")


@pytest.mark.parametrize("override, fragment", [
    ("backbone=resnet18", "backbone.name ('resnet10' -> 'resnet18')"),
    ("dataset.num_classes=5", "dataset.num_classes (10 -> 5)"),
])
def test_resuming_a_checkpoint_of_another_model_ends_with_one_line(static_run, tmp_path, override, fragment):
    proc = run_script("train.py", "conv=static", "dataset=synthetic", "dataset.stem=cifar", "dataset.num_classes=10",
                      "dataset.image_size=8", "dataset.train_size=8", "trainer.batch_size=4", override, "logger=none",
                      f"trainer.resume={static_run / 'checkpoints' / 'best.pt'}", f"hydra.run.dir={tmp_path}")
    assert_one_line_error(proc, fragment)


def test_eval_of_a_missing_checkpoint_ends_with_one_line(tmp_path):
    proc = run_script("eval.py", f"checkpoint={tmp_path / 'nope.pt'}", f"hydra.run.dir={tmp_path}")
    assert_one_line_error(proc, "checkpoint not found", str(tmp_path / "nope.pt"))


@pytest.mark.slow
def test_default_run_trains_a2d2c_on_digits_to_90_percent(tmp_path):
    # The wall time is printed, not asserted (timed assertions are flaky); the README quotes
    # the measured time with its machine.
    run_dir = tmp_path / "default"
    start = time.perf_counter()
    proc = run_script("train.py", f"hydra.run.dir={run_dir}")
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = check_run_outputs(run_dir)
    print(f"default run: {wall:.0f}s wall, best test top-1 {results['best']['test/top1']:.2f}")
    assert results["config"]["conv"]["type"] == "a2d2c" and results["config"]["dataset"]["name"] == "digits"
    assert results["best"]["test/top1"] >= 90.0
    evaluated, _ = evaluate(run_dir / "checkpoints" / "best.pt", tmp_path / "eval")
    assert evaluated["metrics"]["top1"] == results["best"]["test/top1"]


def test_torchrun_two_cpu_processes_train_and_evaluate_every_sample_once(tmp_path):
    proc = run_script("-m", "torch.distributed.run", "--nproc_per_node=2", "train.py", "backbone=mobilenetv2_x0_35",
                      "conv=dynamic", "dataset=synthetic", "dataset.image_size=8", "dataset.stem=cifar",
                      "dataset.num_classes=10", "dataset.train_size=32", "dataset.eval_size=15", "trainer.batch_size=8",
                      "trainer.epochs=1", "logger=none", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["world_size"] == 2 and results["final"]["val/samples"] == 15  # no padding, no repeats
    assert results["final"]["step"] == 4  # 32 samples / 8 per update (4 per rank)
    assert (tmp_path / "train.log").read_text().count("epoch 1/1") == 1  # rank 0 logs alone
