"""The tables `scripts/reproduce.py` reproduces: which runs make each table, and the paper's numbers.

A table is one or more Hydra sweeps (`train.py -m <overrides>`, comma lists are swept); the runs of
all its sweeps are collected into one markdown table and one accuracy-vs-MAdds plot.
"""
from dataclasses import dataclass, field

CONV_TYPES = "static,dynamic,a2d2c,a2d2c_plus"

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


def _dyconv_reference() -> dict:
    reference = {}
    for backbone, rows in DYCONV_IMAGENET.items():
        for conv, (params, macs, top1) in zip(("static", "dynamic"), rows):
            reference[(backbone, conv)] = {"params": params, "macs": macs, "metric": top1}
    return reference


@dataclass(frozen=True)
class PaperTable:
    name: str
    description: str
    sweeps: tuple            # each: the overrides of one `train.py -m` call
    reference: dict = field(default_factory=dict)  # (backbone, conv) -> {"params", "macs", "metric"}
    requires: tuple = ()     # config files (under configs/) the runs need
    needs_data: bool = True  # runs read a dataset from disk: pass dataset.root=...

    def runs(self) -> int:
        count = 0
        for sweep in self.sweeps:
            n = 1
            for override in sweep:
                n *= len(override.split("=", 1)[1].split(",")) if "=" in override else 1
            count += n
        return count


TABLES = {
    "dyconv_imagenet": PaperTable(
        "dyconv_imagenet",
        "DyConv's ImageNet table: static and DY (K=4) ResNet-10/18, MobileNetV2 x1.0/x0.75/x0.5/x0.35, "
        "MobileNetV3-Small, with the paper's recipes (configs/experiment/dyconv_imagenet_*)",
        sweeps=(
            ("experiment=dyconv_imagenet_resnet18,dyconv_imagenet_resnet18_static,"
             "dyconv_imagenet_mobilenetv2_x1_0,dyconv_imagenet_mobilenetv2_x1_0_static,"
             "dyconv_imagenet_mobilenetv2_x0_5,dyconv_imagenet_mobilenetv2_x0_5_static",),
            ("experiment=dyconv_imagenet_resnet18", "backbone=resnet10", "conv=static,dynamic"),
            ("experiment=dyconv_imagenet_mobilenetv2_x1_0",
             "backbone=mobilenetv2_x0_75,mobilenetv2_x0_35,mobilenetv3_small", "conv=static,dynamic"),
        ),
        reference=_dyconv_reference(),
    ),
    "a2d2c_imagenet": PaperTable(
        "a2d2c_imagenet",
        "A2D2C on ImageNet: the four conv types on ResNet-18 and MobileNetV2 x1.0/x0.5 with DyConv's recipes "
        "(the A2D2C paper publishes no numbers we have; DyConv's stand beside static and dynamic)",
        sweeps=(
            ("experiment=dyconv_imagenet_resnet18", f"conv={CONV_TYPES}"),
            ("experiment=dyconv_imagenet_mobilenetv2_x1_0", "backbone=mobilenetv2_x1_0,mobilenetv2_x0_5",
             f"conv={CONV_TYPES}"),
        ),
        reference=_dyconv_reference(),
    ),
    "a2d2c_cifar100": PaperTable(
        "a2d2c_cifar100",
        "A2D2C on CIFAR-100: the four conv types on ResNet-18 and MobileNetV2 x1.0 (CIFAR stem), "
        "recipe of configs/experiment/cifar100_resnet18_static.yaml",
        sweeps=(("experiment=cifar100_resnet18_static", "backbone=resnet18,mobilenetv2_x1_0", f"conv={CONV_TYPES}"),),
    ),
    "a2d2c_coco": PaperTable(
        "a2d2c_coco",
        "A2D2C on COCO 2017 detection: the four conv types in the ResNet-50 backbone of a Faster R-CNN FPN "
        "detector, torchvision's 1x recipe (configs/dataset/coco.yaml)",
        sweeps=(("dataset=coco", "detector=fasterrcnn", "backbone=resnet50", f"conv={CONV_TYPES}"),),
        requires=("dataset/coco.yaml",),
    ),
    "digits_demo": PaperTable(
        "digits_demo",
        "The four conv types in ResNet-10 on the embedded digits set (8x8 scans, no download), 2 epochs: "
        "a few minutes on a CPU. (MobileNetV2 does not learn at 8x8 in so few epochs.)",
        sweeps=(("dataset=digits", "backbone=resnet10", f"conv={CONV_TYPES}", "trainer.epochs=2",
                 "trainer.progress_bar=false"),),
        needs_data=False,
    ),
}
