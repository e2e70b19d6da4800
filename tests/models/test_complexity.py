"""Params and MAdds in the papers' convention, against hand counts and the DyConv paper."""
import functools
import importlib.util
import subprocess
import sys

import pytest
import torch
from torch import nn

from a2d2c.layers import DynamicConv2d, create_conv2d
from a2d2c.layers.dynamic_conv import PATHS
from a2d2c.models import BACKBONES, build_classifier
from a2d2c.models.complexity import count_complexity
from helpers.paths import REPO




def on_meta(name, conv_type, **kw):
    with torch.device("meta"):
        return build_classifier(name, conv_type, num_classes=1000, stem="imagenet", **kw)


def test_static_conv_counts_by_hand():
    conv = create_conv2d("static", 16, 32, 3, stride=2, groups=2)
    c = count_complexity(conv, (16, 20, 20))
    assert c["params"] == 32 * 8 * 9
    assert c["macs"] == 32 * 8 * 9 * 10 * 10


def test_dynamic_conv_counts_attention_aggregation_and_one_conv():
    k, cin, cout, hidden = 4, 16, 32, 4  # hidden = 16 // 4
    conv = create_conv2d("dynamic", cin, cout, 3, stride=2, num_kernels=k, bias=True)
    c = count_complexity(conv, (cin, 20, 20))
    attention = cin * hidden + hidden * k
    aggregation = k * cout * cin * 9 + k * cout  # kernels and biases
    one_conv = cout * cin * 9 * 10 * 10
    assert c["macs"] == attention + aggregation + one_conv
    assert c["params"] == k * cout * cin * 9 + k * cout + (cin + 1) * hidden + (hidden + 1) * k


def test_a2d2c_counts_k_responses_and_the_local_attention():
    k, cin, cout, hidden = 4, 16, 32, 4
    conv = create_conv2d("a2d2c", cin, cout, 3, stride=2, num_kernels=k)
    c = count_complexity(conv, (cin, 20, 20))
    responses = k * cout * cin * 9 * 100
    local = k * 2 * k * 9 * 100
    assert c["macs"] == responses + local + cin * hidden + hidden * k


@pytest.mark.parametrize("groups", [1, 16], ids=["dense", "depthwise"])
def test_a2d2c_plus_counts_by_hand(groups):
    k, cin, cout, hidden, positions = 4, 16, 32 if groups == 1 else 16, 4, 10 * 10
    conv = create_conv2d("a2d2c_plus", cin, cout, 3, stride=2, groups=groups, num_kernels=k)
    c = count_complexity(conv, (cin, 20, 20))
    static = cout * cin // groups * 9 * positions
    if groups == 1:
        rank = 2  # min(O, C kh kw) // 16
        experts = k * rank * cin * 9 * positions  # V_k: C -> r, 3x3
    else:
        rank = cin  # depthwise: 1x1 experts, one per channel
        experts = k * cin * positions  # alpha^T (v u) per position; x_c times it is element-wise
    up = cout * rank // groups * positions if groups == 1 else 0
    local = (2 * k * k + k * 9) * positions  # separable head: 1x1 2K -> K, 3x3 per logit map
    global_ = cin * hidden + hidden * k  # reduction 16, at least 4 hidden units
    assert conv.rank == rank
    assert c["macs"] == static + experts + up + local + global_


@pytest.fixture(scope="module")
def complexity_script():
    """scripts/complexity.py as a module, each (backbone, conv, setting) counted once for the tests below."""
    spec = importlib.util.spec_from_file_location("complexity_script", REPO / "scripts" / "complexity.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.measure = functools.lru_cache(maxsize=None)(script.measure)
    return script


def count_setting(script, name, conv_type, setting):
    cfg = script.SETTINGS[setting]
    return script.measure(name, conv_type, cfg["stem"], cfg["num_classes"], cfg["input_size"])


@pytest.mark.parametrize("setting", ["imagenet", "cifar"])
@pytest.mark.parametrize("name", BACKBONES)
def test_a2d2c_plus_keeps_its_cost_promise_on_every_backbone(complexity_script, name, setting):
    # DESIGN: at most 1.5x static MAdds and 2x static parameters, MobileNets included
    static = count_setting(complexity_script, name, "static", setting)
    plus = count_setting(complexity_script, name, "a2d2c_plus", setting)
    assert plus["macs"] / static["macs"] <= 1.5
    assert plus["params"] / static["params"] <= 2.0


def test_docs_and_readme_tables_are_the_scripts_output(complexity_script):
    # docs/complexity.md and README's "Complexity" tables are regenerated from the code:
    # python scripts/complexity.py --out docs/complexity.md, then paste into README.md
    text = "\n".join(complexity_script.table(s) for s in complexity_script.SETTINGS)
    assert (REPO / "docs" / "complexity.md").read_text() == text
    assert text in (REPO / "README.md").read_text()


@pytest.mark.parametrize("name,static_macs", [("resnet18", 1.814e9), ("mobilenetv2_x1_0", 300.8e6)])
def test_static_backbones_match_torchvision_numbers(name, static_macs):
    # torchvision's model cards: ResNet-18 1.81 GFLOPS(MAdds), MobileNetV2 0.30
    assert count_complexity(on_meta(name, "static"))["macs"] == pytest.approx(static_macs, rel=2e-3)


@pytest.mark.parametrize("name,paper_macs", [("resnet18", 1.85e9), ("mobilenetv2_x1_0", 312.9e6),
                                             ("resnet10", 0.91e9)])
def test_dynamic_backbones_within_two_percent_of_the_dyconv_paper(name, paper_macs):
    macs = count_complexity(on_meta(name, "dynamic"))["macs"]
    assert abs(macs - paper_macs) / paper_macs < 0.02


def test_dynamic_counts_do_not_depend_on_the_path():
    # K responses would count 6.90 G on DY-ResNet-18; every path counts the canonical form, the
    # README table's 45.5M / 1.86G (the value `auto` has always given), and keeps its own path.
    for path in PATHS:
        model = on_meta("resnet18", "dynamic", path=path)
        assert count_complexity(model) == {"params": 45_472_052, "macs": 1_859_012_352}, path
        assert {m.path for m in model.modules() if isinstance(m, DynamicConv2d)} == {path}


def test_meta_and_real_tensors_give_the_same_counts():
    real = build_classifier("resnet10", "a2d2c", num_classes=10, stem="cifar")
    with torch.device("meta"):
        meta = build_classifier("resnet10", "a2d2c", num_classes=10, stem="cifar")
    assert count_complexity(real, (3, 32, 32)) == count_complexity(meta, (3, 32, 32))


def test_counting_keeps_the_training_mode():
    model = build_classifier("resnet10", "dynamic", num_classes=10, stem="cifar").train()
    count_complexity(model, (3, 32, 32))
    assert model.training


def test_complexity_script_prints_paper_numbers_beside_ours(tmp_path):
    out = tmp_path / "table.md"
    subprocess.run([sys.executable, str(REPO / "scripts" / "complexity.py"), "--backbones",
                    "resnet10", "--settings", "imagenet", "--out", str(out)], check=True, capture_output=True, text=True)
    text = out.read_text()
    assert "| resnet10 | 5.4M / 889.2M | 20.2M / 908.9M |" in text
    assert "5.2M / 890.0M | 18.6M / 910.0M |" in text  # the paper's row
    assert "32x32, cifar stem" not in text  # --settings imagenet


# DyConv paper (REFERENCES.md): DY-MobileNetV2 params and MAdds at 224x224, 1000 classes.
DY_MOBILENETV2_PAPER = {"mobilenetv2_x1_0": (11.1e6, 312.9e6), "mobilenetv2_x0_75": (7.0e6, 217.5e6),
                        "mobilenetv2_x0_5": (4.0e6, 101.4e6)}


@pytest.mark.parametrize("name", DY_MOBILENETV2_PAPER)
def test_dy_mobilenetv2_params_and_madds_within_two_percent_of_the_paper(name):
    # The default layout keeps MobileNetV2's last 1x1 conv (features.18) static; converted, the
    # params were 12-16% above the paper's.
    counts = count_complexity(on_meta(name, "dynamic"))
    params, macs = DY_MOBILENETV2_PAPER[name]
    assert abs(counts["params"] - params) / params < 0.02
    assert abs(counts["macs"] - macs) / macs < 0.02


@pytest.mark.parametrize("name", ["mobilenetv3_small", "mobilenetv3_large"])
def test_no_squeeze_excitation_conv_of_mobilenetv3_is_dynamic(name):
    from torchvision.ops.misc import SqueezeExcitation

    model = on_meta(name, "dynamic")
    se = [m for m in model.modules() if isinstance(m, SqueezeExcitation)]
    assert se and all(type(m.fc1) is nn.Conv2d and type(m.fc2) is nn.Conv2d for m in se)
    assert sum(isinstance(m, DynamicConv2d) for m in model.modules()) > 20  # the rest is converted
