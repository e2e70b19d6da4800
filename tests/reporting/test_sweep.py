"""Hydra multirun sweeps: one run dir and one wandb run per job, grouped by the sweep, and a summary table."""
import json

from helpers.train_utils import TINY, run_script


def test_sweep_of_two_conv_types_and_two_seeds_leaves_four_runs_grouped_and_a_summary(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_script("train.py", "-m", "conv=static,dynamic", "seed=0,1", *TINY, "trainer.epochs=1",
                      "trainer.progress_bar=false", f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = sorted(p.parent for p in sweep_dir.glob("*/results.json"))
    assert len(run_dirs) == 4
    results = [json.loads((d / "results.json").read_text()) for d in run_dirs]
    assert sorted((r["config"]["conv"]["type"], r["config"]["seed"]) for r in results) == [
        ("dynamic", 0), ("dynamic", 1), ("static", 0), ("static", 1)]

    # One wandb run per job, all in the sweep's group, each named by its overrides.
    names = set()
    for run_dir, result in zip(run_dirs, results):
        logger = result["config"]["logger"]
        assert logger["group"] == str(sweep_dir)
        names.add(logger["name"])
        offline = list((run_dir / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, offline
        assert str(sweep_dir).encode() in next(offline[0].glob("run-*.wandb")).read_bytes()
    assert len(names) == 4 and all("conv=" in n and "seed=" in n for n in names)

    summary = (sweep_dir / "summary.md").read_text().splitlines()
    rows = [line.split("|")[1:-1] for line in summary[2:]]
    assert [(r[2].strip(), r[3].strip(), r[7].strip()) for r in rows] == [("static", "", "2"), ("dynamic", "4", "2")]
    for row in rows:  # the mean over the two seeds of each conv type
        top1 = [r["best"]["val/top1"] for r in results if r["config"]["conv"]["type"] == row[2].strip()]
        assert row[6].strip().startswith(f"{sum(top1) / 2:.2f}")
