"""The odconv_imagenet table: ODConv 1x and 4x are separate rows, beside its README's numbers, with the notes."""
import pytest
import torch

from a2d2c.layers import ODConv2d
from a2d2c.models import build_classifier
from a2d2c.models.complexity import canonical_copy
from a2d2c.reporting.odconv_reference import ODCONV_IMAGENET, ODCONV_NOTES
from a2d2c.reporting.paper_tables import TABLES
from a2d2c.reporting.table_plan import plan, plan_markdown

# Its layout (the presets odconv_imagenet_*_odconv): the options build_classifier takes for it.
LAYOUTS = {"resnet18": {"exclude": ["layer*.0.downsample"]}, "mobilenetv2_x1_0": {"keep_static": []}}


@pytest.fixture(scope="module")
def rows():
    return plan(TABLES["odconv_imagenet"])  # six ImageNet models built and counted on the CPU: ~15 s


def percent(x) -> str:
    return f"{100 * x:+.1f}%"


def test_plan_has_the_six_rows_with_their_k_and_odconvs_params(rows):
    assert [(r["backbone"], r["conv"], r["num_kernels"]) for r in rows] == [
        ("mobilenetv2_x1_0", "static", None), ("mobilenetv2_x1_0", "odconv", 1), ("mobilenetv2_x1_0", "odconv", 4),
        ("resnet18", "static", None), ("resnet18", "odconv", 1), ("resnet18", "odconv", 4)]
    assert len(rows) == TABLES["odconv_imagenet"].runs()
    for row in rows:
        params, macs, top1 = ODCONV_IMAGENET[row["backbone"]][row["num_kernels"]]
        assert row["paper"] == {"params": params, "macs": macs, "metric": top1}  # the row of its own K
        assert abs(row["params"] - params) < 0.01e6, row  # the README's parameter counts, to its 0.01M
        assert row["dataset"] == "imagenet" and row["image_size"] == 224


def test_notes_quote_the_madds_gaps_the_plan_computes(rows):
    text = plan_markdown(rows)
    for note in ODCONV_NOTES.values():
        assert note in text
    names = {"resnet18": "ResNet-18", "mobilenetv2_x1_0": "MobileNetV2 x1.0"}
    for backbone, name in names.items():
        gap = {r["num_kernels"]: r["relative"]["macs"] for r in rows if r["backbone"] == backbone and r["conv"] == "odconv"}
        note = ODCONV_NOTES[(backbone, "odconv")]
        assert note.startswith(f"{name} (ours {percent(gap[1])} at 1x, {percent(gap[4])} at 4x)"), (note, gap)
    # Each ODConv row carries the general note and its backbone's; a static row neither (its counts are ODConv's).
    for row in rows:
        odconv_notes = [n for n in row["notes"] if n in ODCONV_NOTES.values()]
        expected = [] if row["conv"] == "static" else [ODCONV_NOTES[("*", "odconv")],
                                                        ODCONV_NOTES[(row["backbone"], "odconv")]]
        assert odconv_notes == expected, row


@pytest.mark.parametrize("backbone, scalings", [("resnet18", 3.2e6), ("mobilenetv2_x1_0", 10.6e6)])
def test_the_uncounted_attention_scalings_are_what_the_notes_say(backbone, scalings, rows):
    # α_c ⊙ x on every ODConv input and α_f ⊙ y on every output but a depthwise conv's (it has no α_f):
    # one multiply per element, the same at K = 1 and 4.
    with torch.device("meta"):
        model = canonical_copy(build_classifier(backbone, "odconv", num_kernels=1, **LAYOUTS[backbone])).eval()
        counted = []

        def hook(module, inputs, output):
            counted.append(inputs[0][0].numel() + (output[0].numel() if module.omni_attention.filter_fc is not None
                                                   else 0))

        for module in model.modules():
            if isinstance(module, ODConv2d):
                module.register_forward_hook(hook)
        model(torch.zeros(1, 3, 224, 224))
    assert sum(counted) == pytest.approx(scalings, abs=0.05e6)
    note = ODCONV_NOTES[(backbone, "odconv")]
    assert f"are {sum(counted) / 1e6:.1f}M MAdds" in note, note
    with_them = {r["num_kernels"]: (r["macs"] + sum(counted)) / r["paper"]["macs"] - 1
                 for r in rows if r["backbone"] == backbone and r["conv"] == "odconv"}
    assert f"with them {percent(with_them[1])} and {percent(with_them[4])}" in note, (note, with_them)
