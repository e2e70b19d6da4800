"""scripts/reproduce.py --plan (a2d2c/reporting/table_plan.py): every run of a table composed, built and counted, no data."""
import json

import pytest
import torch

from a2d2c.engine.trainer import Trainer
from a2d2c.models import build_classifier
from a2d2c.models.complexity import count_complexity
from a2d2c.reporting.paper_tables import TABLES, paper_numbers
from a2d2c.reporting.table_plan import plan, plan_markdown, plan_row
from helpers.train_utils import QUIET, compose_config, run_script

DIGITS_RUNS = [("digits", "resnet10", "static", None), ("digits", "resnet10", "dynamic", 4),
               ("digits", "resnet10", "a2d2c", 4), ("digits", "resnet10", "a2d2c_plus", 4)]


def key(row):
    return row["dataset"], row["backbone"], row["conv"], row["num_kernels"]


def test_digits_demo_plan_counts_what_the_trainer_counts_without_reading_the_data(tmp_path, monkeypatch):
    import a2d2c.data.digits as digits

    def no_data(*args, **kwargs):
        raise AssertionError("the plan instantiated a dataset")

    monkeypatch.setattr(digits.Digits, "__init__", no_data)
    rows = plan(TABLES["digits_demo"])
    monkeypatch.undo()
    assert [key(r) for r in rows] == DIGITS_RUNS
    for row in rows:
        assert row["overrides"] == ["dataset=digits", "backbone=resnet10", f"conv={row['conv']}", "trainer.epochs=2",
                                    "trainer.progress_bar=False"]
        assert row["paper"] is None and row["seeds"] == [0]
        # The run itself: the Trainer that train.py builds from the same overrides, with its data.
        trainer = Trainer(compose_config(*row["overrides"], *QUIET, "trainer.device=cpu"), tmp_path / row["conv"])
        assert (row["params"], row["macs"]) == (trainer.complexity["params"], trainer.complexity["macs"]), row["conv"]


def test_detection_run_is_counted_on_what_the_trainer_counts(tmp_path):
    # A detector is counted on task.complexity_module (backbone + FPN) at task.input_size, as the Trainer does.
    overrides = ["dataset=shapes", "backbone=resnet10", "conv=dynamic", f"dataset.root={tmp_path / 'shapes'}",
                 "dataset.num_train=8", "dataset.num_val=4"]
    row = plan_row(TABLES["a2d2c_coco"], overrides)
    assert not (tmp_path / "shapes").exists()  # the plan generated no data
    assert key(row) == ("shapes", "resnet10", "dynamic", 4) and row["metric"] == "AP" and row["paper"] is None
    trainer = Trainer(compose_config(*overrides, *QUIET, "trainer.device=cpu"), tmp_path / "run")
    assert (row["params"], row["macs"]) == (trainer.complexity["params"], trainer.complexity["macs"])


def test_seeds_collapse_and_user_overrides_replace_the_tables_own():
    rows = plan(TABLES["digits_demo"], ["conv=static,dynamic", "seed=0,1,2", "dataset.image_size=16"])
    assert [key(r) for r in rows] == DIGITS_RUNS[:2]
    assert all(r["seeds"] == [0, 1, 2] and r["image_size"] == 16 for r in rows)
    assert rows[1]["overrides"] == ["dataset=digits", "backbone=resnet10", "trainer.epochs=2",
                                    "trainer.progress_bar=False", "conv=dynamic", "seed=0", "dataset.image_size=16"]
    static = build_classifier("resnet10", "static", num_classes=10, stem="cifar")
    assert rows[0]["macs"] == count_complexity(static, (3, 16, 16))["macs"]


def test_dyconv_row_stands_beside_the_papers_with_the_relative_difference():
    row = plan_row(TABLES["dyconv_imagenet"], ["experiment=dyconv_imagenet_resnet18_dynamic"])
    assert key(row) == ("imagenet", "resnet18", "dynamic", 4)
    with torch.device("meta"):  # counted independently: the model as scripts/complexity.py builds it
        model = build_classifier("resnet18", "dynamic", num_classes=1000, stem="imagenet", num_kernels=4, reduction=4)
    assert (row["params"], row["macs"]) == tuple(count_complexity(model, (3, 224, 224)).values())
    assert row["paper"] == {"params": 42.7e6, "macs": 1.85e9, "metric": 72.7}  # REFERENCES.md, DyConv table
    assert row["relative"] == pytest.approx({"params": row["params"] / 42.7e6 - 1, "macs": row["macs"] / 1.85e9 - 1})
    line, = [line for line in plan_markdown([row]).splitlines() if line.startswith("| imagenet")]
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[:9] == ["imagenet", "resnet18", "dynamic", "4", "45.5M", "1.86G", "(to run)", "1", "42.7M"]
    assert cells[9:12] == ["1.85G", "72.7", f"{100 * (row['params'] / 42.7e6 - 1):+.1f}%"]
    assert cells[12].startswith(f"{100 * (row['macs'] / 1.85e9 - 1):+.1f}% [1]")
    assert "0.31M of a 2.8M gap" in plan_markdown([row])  # what is known about the difference, said beside it


@pytest.mark.parametrize("change, paper", [({}, 42.7e6), ({"num_kernels": 8}, None), ({"image_size": 160}, None),
                                           ({"dataset": "cifar100"}, None), ({"conv": "a2d2c"}, None),
                                           ({"conv": "static", "num_kernels": None}, 11.1e6)])
def test_paper_numbers_only_for_the_papers_setting(change, paper):
    run = {"dataset": "imagenet", "image_size": 224, "num_classes": 1000, "backbone": "resnet18", "conv": "dynamic",
           "num_kernels": 4, **change}
    numbers = paper_numbers(TABLES["a2d2c_imagenet"], run)
    assert (numbers and numbers["params"]) == paper


def test_plan_cli_prints_the_table_and_writes_the_json_and_runs_nothing(tmp_path):
    proc = run_script("scripts/reproduce.py", "--table", "digits_demo", "--plan", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits_demo_plan.json"]
    rows = json.loads((tmp_path / "digits_demo_plan.json").read_text())
    assert [key(r) for r in rows] == DIGITS_RUNS
    for row in rows:
        assert {"backbone", "conv", "num_kernels", "params", "macs", "overrides", "paper"} <= set(row)
        assert f"| digits | resnet10 | {row['conv']} | {row['num_kernels'] or ''} | {row['params'] / 1e6:.1f}M |" \
            in proc.stdout


@pytest.mark.parametrize("args, fragment", [
    (("--table", "dyconv_imagnet", "--plan"), "unknown table 'dyconv_imagnet'; valid: a2d2c_cifar100, a2d2c_coco"),
    (("--table", "digits_demo", "--plan", "conv.options.num_kernel=8"), "unknown config key 'conv.options.num_kernel'"),
    (("--table", "digits_demo", "--plan", "conv=dynamic", "conv.options.num_kernels=0"),
     "run dataset=digits backbone=resnet10 trainer.epochs=2 trainer.progress_bar=False conv=dynamic "
     "conv.options.num_kernels=0: num_kernels must be >= 1"),
])
def test_plan_bad_input_is_one_line(args, fragment, tmp_path):
    proc = run_script("scripts/reproduce.py", *args, "--out", tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_whole_dyconv_imagenet_plan_has_the_papers_numbers_on_every_row(tmp_path):
    rows = plan(TABLES["dyconv_imagenet"])
    assert len(rows) == TABLES["dyconv_imagenet"].runs() == 14
    assert all(r["paper"] is not None and r["relative"]["macs"] is not None for r in rows)
