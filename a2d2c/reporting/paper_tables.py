"""The tables `scripts/reproduce.py` reproduces: which runs make each table, and the paper's numbers.

A table is one or more Hydra sweeps (`train.py -m <overrides>`, comma lists are swept); the runs of
all its sweeps are collected into one markdown table and one plot (accuracy vs MAdds and vs params).
A model, and the paper's numbers for it, is (backbone, conv, K): K (conv.options.num_kernels) tells
ODConv 1x from 4x; a static conv has none (None).
"""
from dataclasses import dataclass, field

from a2d2c.layers import CONV_TYPES as ALL_CONV_TYPES
from a2d2c.reporting.odconv_reference import ODCONV_NOTES, ODCONV_SETTING, odconv_reference

# The A2D2C paper's comparison: static, DyConv and its two types.
CONV_TYPES = "static,dynamic,a2d2c,a2d2c_plus"
# Every conv type the layers build, so that a new one joins the cross-operator tables without an edit here.
EVERY_CONV_TYPE = ",".join(ALL_CONV_TYPES)


def reference_key(backbone: str, conv: str, num_kernels=None) -> tuple:
    """The key of a model in a table's reference: K is dropped for a static conv, which has no kernels to mix
    (a static run may still carry a K from an override that reached conv.options)."""
    return backbone, conv, None if conv == "static" else num_kernels

# DyConv (Chen et al., CVPR 2020) ImageNet table: (params, MAdds, top-1) of static and DY models
# at 224x224 (REFERENCES.md; the x0.75 / x0.35 top-1 and static MobileNetV2 x0.75/x0.5/x0.35 rows
# are from secondary sources, approximate).
DYCONV_IMAGENET = {
    "mobilenetv2_x1_0": ((3.5e6, 300.0e6, 72.0), (11.1e6, 312.9e6, 75.2)),
    "mobilenetv2_x0_75": ((2.6e6, 209.0e6, 69.8), (7.0e6, 217.5e6, 73.7)),
    "mobilenetv2_x0_5": ((2.0e6, 97.0e6, 65.4), (4.0e6, 101.4e6, 69.9)),
    "mobilenetv2_x0_35": ((1.7e6, 59.2e6, 60.3), (2.8e6, 62.0e6, 65.9)),
    "mobilenetv3_small": ((2.9e6, 66.0e6, 67.4), (4.8e6, 68.5e6, 70.3)),
    "resnet18": ((11.1e6, 1.81e9, 70.4), (42.7e6, 1.85e9, 72.7)),
    "resnet10": ((5.2e6, 0.89e9, 63.5), (18.6e6, 0.91e9, 67.7)),
}


# The setting the DyConv numbers hold for (REFERENCES.md): ImageNet-1k at 224x224, DY layers with K = 4
# (the K of its reference keys).
DYCONV_SETTING = {"dataset": "imagenet", "image_size": 224, "num_classes": 1000, "num_kernels": 4}

# What is known about where our counts and DyConv's differ (REFERENCES.md, "DyConv ImageNet table").
# (backbone or "*", conv or "*") -> note; a row gets every note that matches it.
DYCONV_NOTES = {
    # Not "the attention branches": for DY-ResNet-18 they are 0.31M of a 2.8M gap, and the MobileNetV2
    # rows, attention included, match the paper once features.18 stays static.
    ("resnet18", "*"): "The paper's ResNet-18 has fewer parameters than torchvision's (static: 11.1M vs 11.7M); "
                       "for DY-ResNet-18 the attention branches are 0.31M of a 2.8M gap; what else the paper "
                       "counts differently is not known. MAdds agree within 1%.",
    ("resnet10", "*"): "The paper's ResNet-10 has fewer parameters than our torchvision-style one; what the "
                       "paper counts differently is not known. MAdds agree within 1%.",
    ("mobilenetv3_small", "*"): "torchvision's MobileNetV3-Small is a smaller network (2.5M, 56.5M MAdds) than "
                                "the one in the paper's table (REFERENCES.md).",
    ("mobilenetv2_x0_75", "*"): "Paper row as recalled by secondary sources (top-1; static params/MAdds): "
                                "approximate (REFERENCES.md).",
    ("mobilenetv2_x0_35", "*"): "Paper row as recalled by secondary sources (top-1; static params/MAdds): "
                                "approximate (REFERENCES.md).",
    ("mobilenetv2_x0_5", "static"): "Paper static row as recalled by secondary sources: approximate (REFERENCES.md).",
}


# One preset per row of the paper's table (configs/experiment/dyconv_imagenet_<model>_dynamic.yaml, swept with
# conv=static,dynamic for both rows): the recipe depends on the width (dropout, label smoothing, mixup), so
# rows are not made by swapping backbone=.
DYCONV_MODELS = ("resnet18", "resnet10", "mobilenetv2_x1_0", "mobilenetv2_x0_75", "mobilenetv2_x0_5",
                 "mobilenetv2_x0_35", "mobilenetv3_small")


def _dyconv_reference() -> dict:
    reference = {}
    for backbone, rows in DYCONV_IMAGENET.items():
        for conv, (params, macs, top1) in zip(("static", "dynamic"), rows):
            reference[reference_key(backbone, conv, DYCONV_SETTING["num_kernels"])] = {
                "params": params, "macs": macs, "metric": top1}
    return reference


@dataclass(frozen=True)
class PaperTable:
    name: str
    description: str
    sweeps: tuple            # each: the overrides of one `train.py -m` call
    reference: dict = field(default_factory=dict)  # reference_key(backbone, conv, K) -> {"params", "macs", "metric"}
    requires: tuple = ()     # config files (under configs/) the runs need
    needs_data: bool = True  # runs read a dataset from disk: pass dataset.root=...
    reference_setting: dict = field(default_factory=dict)  # dataset, image_size, num_classes of the reference
    reference_notes: dict = field(default_factory=dict)    # (backbone or "*", conv or "*") -> known difference

    def runs(self) -> int:
        count = 0
        for sweep in self.sweeps:
            n = 1
            for override in sweep:
                n *= len(override.split("=", 1)[1].split(",")) if "=" in override else 1
            count += n
        return count


def _digits_table(name: str, conv_types: str, description: str) -> PaperTable:
    """ResNet-10 on the embedded digits, 2 epochs, the given conv types: no data to download."""
    return PaperTable(name, description, sweeps=(("dataset=digits", "backbone=resnet10", f"conv={conv_types}",
                                                  "trainer.epochs=2", "trainer.progress_bar=false"),),
                      needs_data=False)


TABLES = {
    "dyconv_imagenet": PaperTable(
        "dyconv_imagenet",
        "DyConv's ImageNet table: static and DY (K=4) ResNet-10/18, MobileNetV2 x1.0/x0.75/x0.5/x0.35, "
        "MobileNetV3-Small, with the DyConv paper's recipes as recalled (configs/experiment/dyconv_imagenet_*; "
        "the runs warn about the values not checked against the paper)",
        sweeps=(
            ("experiment=" + ",".join(f"dyconv_imagenet_{m}_dynamic" for m in DYCONV_MODELS), "conv=static,dynamic"),
        ),
        reference=_dyconv_reference(),
        reference_setting=DYCONV_SETTING,
        reference_notes=DYCONV_NOTES,
    ),
    "a2d2c_imagenet": PaperTable(
        "a2d2c_imagenet",
        "A2D2C on ImageNet: the four conv types on ResNet-18 and MobileNetV2 x1.0/x0.5 with DyConv's recipes "
        "(the A2D2C paper publishes no numbers we have; DyConv's stand beside static and dynamic)",
        sweeps=(
            ("experiment=dyconv_imagenet_resnet18_dynamic", f"conv={CONV_TYPES}"),
            ("experiment=dyconv_imagenet_mobilenetv2_x1_0_dynamic,dyconv_imagenet_mobilenetv2_x0_5_dynamic",
             f"conv={CONV_TYPES}"),
        ),
        reference=_dyconv_reference(),
        reference_setting=DYCONV_SETTING,
        reference_notes=DYCONV_NOTES,
    ),
    "a2d2c_cifar100": PaperTable(
        "a2d2c_cifar100",
        "A2D2C on CIFAR-100: the four conv types on ResNet-18 and MobileNetV2 x1.0 (CIFAR stem), "
        "recipe of configs/experiment/ours_cifar100_resnet18_static.yaml",
        sweeps=(("experiment=ours_cifar100_resnet18_static", "backbone=resnet18,mobilenetv2_x1_0",
                 f"conv={CONV_TYPES}"),),
    ),
    "a2d2c_coco": PaperTable(
        "a2d2c_coco",
        "A2D2C on COCO 2017 detection: the four conv types in the ResNet-50 backbone of a Faster R-CNN FPN "
        "detector, torchvision's 1x recipe (configs/experiment/recipe/torchvision_coco_1x.yaml, with dataset=coco)",
        sweeps=(("dataset=coco", "detector=fasterrcnn", "backbone=resnet50", f"conv={CONV_TYPES}"),),
        requires=("dataset/coco.yaml",),
    ),
    "odconv_imagenet": PaperTable(
        "odconv_imagenet",
        "ODConv's ImageNet table: static, ODConv 1x and 4x ResNet-18 and MobileNetV2 x1.0 with ODConv's recipes "
        "and layouts (configs/experiment/odconv_imagenet_*; the static rows with conv=static, the same recipe)",
        sweeps=(
            ("experiment=odconv_imagenet_resnet18_odconv,odconv_imagenet_mobilenetv2_x1_0_odconv",
             "conv.options.num_kernels=1,4"),
            ("experiment=odconv_imagenet_resnet18_dynamic,odconv_imagenet_mobilenetv2_x1_0_dynamic", "conv=static"),
        ),
        reference=odconv_reference(),
        reference_setting=ODCONV_SETTING,
        reference_notes=ODCONV_NOTES,
    ),
    # Cross-operator tables: one backbone, one recipe, every conv type with its defaults (K = 4, every conv
    # but the stem converted), so that the types differ in the conv only. The existing presets give that:
    # experiment=<recipe> fixes backbone and recipe, conv=<type> swaps only the conv group (a preset's
    # tau_schedule reaches the types with a τ; static and condconv ignore it).
    "conv_types_cifar100": PaperTable(
        "conv_types_cifar100",
        "Every conv type on CIFAR-100, ResNet-18 (CIFAR stem), one recipe: "
        "configs/experiment/ours_cifar100_resnet18_static.yaml with conv=<type>",
        sweeps=(("experiment=ours_cifar100_resnet18_static", f"conv={EVERY_CONV_TYPE}"),),
    ),
    "conv_types_imagenet": PaperTable(
        "conv_types_imagenet",
        "Every conv type on ImageNet, ResNet-18, one recipe: DyConv's (dyconv_imagenet_resnet18_dynamic) with "
        "conv=<type>; DyConv's numbers beside its rows",
        sweeps=(("experiment=dyconv_imagenet_resnet18_dynamic", f"conv={EVERY_CONV_TYPE}"),),
        reference=_dyconv_reference(),
        reference_setting=DYCONV_SETTING,
        reference_notes=DYCONV_NOTES,
    ),
    "conv_types_digits": _digits_table(
        "conv_types_digits", EVERY_CONV_TYPE,
        "Every conv type in ResNet-10 on the embedded digits set (8x8 scans, no download), 2 epochs: "
        "digits_demo's runs for all types, a few minutes on a CPU"),
    "digits_demo": _digits_table(
        "digits_demo", CONV_TYPES,
        "The four conv types in ResNet-10 on the embedded digits set (8x8 scans, no download), 2 epochs: "
        "a few minutes on a CPU. (MobileNetV2 does not learn at 8x8 in so few epochs.)"),
}


def paper_numbers(table: PaperTable, run: dict):
    """The paper's {"params", "macs", "metric"} for a run (a dict with dataset, image_size, num_classes,
    backbone, conv, num_kernels), or None: also None when the run's setting is not the paper's
    (another dataset or input size; a dynamic conv with a K the paper has no row for)."""
    paper = table.reference.get(reference_key(run["backbone"], run["conv"], run.get("num_kernels")))
    setting = table.reference_setting
    if paper is None:
        return None
    for key in ("dataset", "image_size", "num_classes"):
        if key in setting and run.get(key) != setting[key]:
            return None
    return dict(paper)


def paper_notes(table: PaperTable, run: dict) -> list:
    """What is known about why the run's counts may differ from the paper's."""
    return [note for (backbone, conv), note in table.reference_notes.items()
            if backbone in ("*", run["backbone"]) and conv in ("*", run["conv"])]
