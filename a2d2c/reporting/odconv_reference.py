"""ODConv's ImageNet table (Li, Zhou, Yao; ICLR 2022), from its README (../shared/REFERENCES.md, "ODConv"),
and what is known about where our counts and its differ."""

# The setting its numbers hold for: ImageNet-1k at 224x224 (REFERENCES.md).
ODCONV_SETTING = {"dataset": "imagenet", "image_size": 224, "num_classes": 1000}

# backbone -> {K: (params, MAdds, top-1)}; K None is the static baseline, 1 and 4 are "ODConv 1x" and "4x".
ODCONV_IMAGENET = {
    "resnet18": {None: (11.69e6, 1.814e9, 70.25), 1: (11.94e6, 1.838e9, 73.05), 4: (44.90e6, 1.916e9, 74.19)},
    "mobilenetv2_x1_0": {None: (3.50e6, 300.8e6, 71.65), 1: (4.94e6, 311.8e6, 74.74), 4: (11.51e6, 327.1e6, 75.29)},
}

# (backbone or "*", conv or "*") -> note. Only what is known: ODConv publishes no counting code, so the
# notes give our convention and the size of what it leaves out, not a claim of what ODConv counts.
# The MAdds gaps are `reproduce.py --table odconv_imagenet --plan`'s (tests/reporting/test_odconv_table.py).
ODCONV_NOTES = {
    ("*", "odconv"): "Our parameter counts equal ODConv's with its layout (the presets odconv_imagenet_*_odconv). "
                     "Our MAdds are lower: we count matrix products only (the attention FCs, the K-kernel "
                     "aggregation K·|W|, one conv), DyConv's convention (DY-ResNet-18: 1.86G here, 1.85G in DyConv's paper); "
                     "ODConv's counting code is not published (its FLOPs are disputed, ODConv#18/#22).",
    ("resnet18", "odconv"): "ResNet-18 (ours -0.7% at 1x, -3.0% at 4x): the element-wise scalings of the maps by "
                            "the channel and filter attentions (α_c⊙x, α_f⊙y), which we do not count, are 3.2M "
                            "MAdds; with them -0.5% and -2.8%. Whether ODConv counts them is not known.",
    ("mobilenetv2_x1_0", "odconv"): "MobileNetV2 x1.0 (ours -3.1% at 1x, -4.9% at 4x): the element-wise scalings "
                                    "α_c⊙x, α_f⊙y (no α_f in depthwise convs), which we do not count, are 10.6M "
                                    "MAdds; with them +0.3% and "
                                    "-1.7%. Whether ODConv counts them is not known.",
}


def odconv_reference() -> dict:
    """reference_key(backbone, conv, K) -> {"params", "macs", "metric"} (paper_tables.reference_key's layout)."""
    return {(backbone, "static" if k is None else "odconv", k): {"params": p, "macs": m, "metric": top1}
            for backbone, rows in ODCONV_IMAGENET.items() for k, (p, m, top1) in rows.items()}
