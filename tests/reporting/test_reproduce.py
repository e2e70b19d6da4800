"""scripts/reproduce.py and scripts/make_table.py: the tables' runs, the markdown table and the plot."""
import json
import re
import sys
from pathlib import Path

import pytest

from a2d2c.reporting.accuracy_plot import accuracy_figure
from a2d2c.reporting.paper_tables import TABLES
from a2d2c.reporting.results_table import load_runs
from helpers.train_utils import CONFIG_DIR, REPO, compose_config, run_script

sys.path.insert(0, str(REPO / "scripts"))
import reproduce  # noqa: E402


def test_digits_demo_trains_the_four_conv_types_and_writes_the_table_and_the_plot(tmp_path):
    # The table's runs, shortened: MobileNetV2 x0.35 for one epoch, no tracker.
    proc = run_script("scripts/reproduce.py", "--table", "digits_demo", "--out", tmp_path,
                      "backbone=mobilenetv2_x0_35", "trainer.epochs=1", "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in tmp_path.glob("sweep_0/*/results.json")]
    assert sorted(r["config"]["conv"]["type"] for r in results) == ["a2d2c", "a2d2c_plus", "dynamic", "static"]
    assert all(r["config"]["trainer"]["epochs"] == 1 for r in results)
    lines = (tmp_path / "digits_demo.md").read_text().splitlines()
    assert lines[0].startswith("| dataset | model | conv | K | params | MAdds | top-1 |")
    rows = {row[2].strip(): row for row in (line.split("|")[1:-1] for line in lines[2:])}
    assert list(rows) == ["static", "dynamic", "a2d2c", "a2d2c_plus"]
    for r in results:
        row = rows[r["config"]["conv"]["type"]]
        assert row[3].strip() == ("" if r["config"]["conv"]["type"] == "static" else "4")
        assert row[4].strip() == f"{r['params'] / 1e6:.1f}M" and row[6].strip() == f"{r['best']['test/top1']:.2f}"
    assert (tmp_path / "digits_demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def fake_run(directory: Path, backbone, conv, seed, top1, params=1_000_000, macs=50_000_000, num_kernels=4):
    """A finished run's results.json, with the keys of the resolved config that the table reads."""
    directory.mkdir(parents=True)
    options = {} if conv == "static" else {"num_kernels": num_kernels}
    config = {"dataset": {"name": "imagenet", "eval_split": "val"}, "backbone": {"name": backbone},
              "conv": {"type": conv, "options": options}, "seed": seed}
    (directory / "results.json").write_text(json.dumps(
        {"final": {}, "best": {"val/top1": top1}, "params": params, "macs": macs, "config": config}))


def test_make_table_averages_seeds_and_puts_the_paper_numbers_beside_ours(tmp_path):
    fake_run(tmp_path / "a", "resnet18", "dynamic", 0, 72.0, 45_500_000, 1_860_000_000)
    fake_run(tmp_path / "b", "resnet18", "dynamic", 1, 73.0, 45_500_000, 1_860_000_000)
    fake_run(tmp_path / "c", "resnet18", "static", 0, 70.0, 11_700_000, 1_810_000_000)
    out, plot = tmp_path / "table.md", tmp_path / "plot.png"
    proc = run_script("scripts/make_table.py", tmp_path, "--table", "dyconv_imagenet", "--out", out, "--plot", plot)
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == ("| dataset | model | conv | K | params | MAdds | top-1 | runs | paper params | paper MAdds "
                        "| paper top-1 |")
    assert lines[2] == "| imagenet | resnet18 | static |  | 11.7M | 1.81G | 70.00 | 1 | 11.1M | 1.81G | 70.4 |"
    assert lines[3] == ("| imagenet | resnet18 | dynamic | 4 | 45.5M | 1.86G | 72.50 ± 0.71 | 2 | 42.7M | 1.85G "
                        "| 72.7 |")
    assert plot.read_bytes()[:4] == b"\x89PNG"


def odconv_runs(directory: Path):
    """ResNet-18 static, ODConv 1x (two seeds) and 4x, with the counts the plan gives for them."""
    fake_run(directory / "k1_s0", "resnet18", "odconv", 0, 73.0, 11_943_944, 1_825_305_264, num_kernels=1)
    fake_run(directory / "k1_s1", "resnet18", "odconv", 1, 73.2, 11_943_944, 1_825_305_264, num_kernels=1)
    fake_run(directory / "k4_s0", "resnet18", "odconv", 0, 74.0, 44_901_640, 1_858_262_896, num_kernels=4)
    fake_run(directory / "static", "resnet18", "static", 0, 70.0, 11_689_512, 1_814_073_344)


def test_make_table_keeps_odconv_1x_and_4x_apart_each_beside_its_paper_row(tmp_path):
    odconv_runs(tmp_path / "runs")
    out, plot = tmp_path / "table.md", tmp_path / "plot.png"
    proc = run_script("scripts/make_table.py", tmp_path / "runs", "--table", "odconv_imagenet", "--out", out,
                      "--plot", plot)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().splitlines()[2:] == [
        "| imagenet | resnet18 | static |  | 11.7M | 1.81G | 70.00 | 1 | 11.7M | 1.81G | 70.25 |",
        "| imagenet | resnet18 | odconv | 1 | 11.9M | 1.83G | 73.10 ± 0.14 | 2 | 11.9M | 1.84G | 73.05 |",
        "| imagenet | resnet18 | odconv | 4 | 44.9M | 1.86G | 74.00 | 1 | 44.9M | 1.92G | 74.19 |"]
    png = plot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (2 * 768, 576)  # two 6.4 x 4.8 in panels side by side at 120 dpi


def test_plot_has_a_madds_and_a_params_panel_with_a_line_per_conv_and_k(tmp_path):
    odconv_runs(tmp_path)
    rows = load_runs([tmp_path])
    reference = TABLES["odconv_imagenet"].reference
    figure = accuracy_figure(rows, reference=reference)
    assert [ax.get_xlabel() for ax in figure.axes] == ["MAdds (M)", "params (M)"]
    for ax, x in zip(figure.axes, ("macs", "params")):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert sorted(lines) == ["odconv ×1", "odconv ×1 (paper)", "odconv ×4", "odconv ×4 (paper)", "static",
                                 "static (paper)"]
        for row in rows:
            assert list(lines[row.label].get_xdata()) == [getattr(row, x) / 1e6]
            assert list(lines[row.label].get_ydata()) == [row.mean]
            paper = reference[("resnet18", row.conv, row.num_kernels)]
            assert list(lines[f"{row.label} (paper)"].get_xdata()) == [paper[x] / 1e6]


@pytest.mark.parametrize("args, fragment", [
    (("scripts/make_table.py", "/nonexistent/runs"), "no such run directory or results.json: /nonexistent/runs"),
    (("scripts/reproduce.py", "--table", "dyconv_imagenet"), "pass dataset.root="),
])
def test_bad_input_ends_with_one_line(args, fragment, tmp_path):
    proc = run_script(*args)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in proc.stderr, proc.stderr


def test_slurm_dry_run_prints_one_submitting_sweep_per_table_part(tmp_path):
    proc = run_script("scripts/reproduce.py", "--table", "a2d2c_imagenet", "--slurm", "--nproc", "8", "--dry-run",
                      "--out", tmp_path, "dataset.root=/data/imagenet", "hydra.launcher.partition=gpu")
    assert proc.returncode == 0, proc.stderr
    commands = proc.stdout.strip().splitlines()
    assert len(commands) == len(TABLES["a2d2c_imagenet"].sweeps) == 2
    for i, command in enumerate(commands):
        assert " -m " in command and "hydra/launcher=slurm_ddp" in command and "hydra.launcher.tasks_per_node=8" in command
        assert f"hydra.sweep.dir={tmp_path / f'sweep_{i}'}" in command and "dataset.root=/data/imagenet" in command
    assert not list(tmp_path.iterdir())  # nothing ran


def test_user_overrides_replace_the_tables_own_and_are_added_to_every_sweep():
    commands = reproduce.sweep_commands(TABLES["digits_demo"], Path("/out"), ["trainer.epochs=1", "seed=0,1"])
    assert len(commands) == 1
    command = commands[0]
    assert "trainer.epochs=1" in command and "trainer.epochs=2" not in command and "seed=0,1" in command


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_run_composes(name):
    table = TABLES[name]
    if any(not (CONFIG_DIR / req).is_file() for req in table.requires):
        pytest.skip(f"{name} needs {table.requires}, not in this checkout yet")
    for sweep in table.sweeps:
        # The first choice of every swept key: the presets and groups it names exist and compose.
        overrides = [re.sub(r"=([^,]*),.*", r"=\1", o) for o in sweep]
        cfg = compose_config(*overrides)
        for override in sweep:
            key, values = override.split("=", 1)
            if key in ("backbone", "conv"):
                assert cfg[key]["name" if key == "backbone" else "type"] == values.split(",")[0]
