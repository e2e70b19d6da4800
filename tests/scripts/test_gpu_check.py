"""scripts/gpu_check.py: the GPU acceptance command's verdicts, its targets (the ones docs/benchmarks.md
states), and its whole pipeline on CPU at tiny sizes (--smoke)."""
import json
import re
import sys

import pytest

from helpers.paths import REPO

sys.path.insert(0, str(REPO / "scripts"))

import gpu_check  # noqa: E402


def rows(speed, memory):
    return [{"conv": conv, "name": backbone, "mode": "train", "speed_vs_static": speed, "memory_vs_static": memory}
            for conv, backbone in gpu_check.TARGETS]


@pytest.mark.parametrize("speed,memory,ok", [(0.9, 1.2, True), (0.69, 1.2, False), (0.9, 1.6, False),
                                             (0.9, None, False)])
def test_every_target_must_hold(speed, memory, ok):
    verdicts = gpu_check.judge(rows(speed, memory), judged=True)
    # a2d2c has no memory target; a missing memory figure fails the others
    assert all(v["ok"] for v in verdicts) is ok
    assert [v["ok"] for v in gpu_check.judge(rows(speed, memory), judged=False)] == [None] * len(verdicts)


def test_targets_are_the_ones_docs_benchmarks_states():
    text = (REPO / "docs" / "benchmarks.md").read_text()
    table = dict(re.findall(r"^\| (dynamic|a2d2c_plus|a2d2c) \| (≥ .+) \|$", text, re.M))
    for (conv, backbone), (speed, memory) in gpu_check.TARGETS.items():
        cells = [c.strip() for c in table[conv].split("|")]
        column = {"resnet18": 0, "mobilenetv2_x1_0": 1}[backbone]
        assert cells[column] == f"≥ {speed}×", (conv, backbone)
        assert cells[2] == ("—" if memory is None else f"≤ {memory}× static"), conv


def test_smoke_run_on_cpu_goes_end_to_end(tmp_path):
    assert gpu_check.main(["--smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["smoke"] and {(v["conv"], v["backbone"]) for v in report["targets"]} == set(gpu_check.TARGETS)
    assert all(v["speed_vs_static"] > 0 and v["saved_vs_static"] > 0 for v in report["targets"])
    assert report["cuda_tests"]["failed"] == 0 and (tmp_path / "gpu_tests.log").is_file()
    text = (tmp_path / "gpu_check.md").read_text()
    assert "wiring only, no target judged" in text
    from a2d2c.layers import CONV_TYPES  # every type measured, judged or not
    assert all(f"| {conv} | resnet18 |" in text for conv in CONV_TYPES)


def test_without_cuda_the_full_check_refuses_in_one_line(tmp_path, capsys):
    pytest.importorskip("torch").cuda.is_available() and pytest.skip("a GPU is here")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no CUDA device here")
