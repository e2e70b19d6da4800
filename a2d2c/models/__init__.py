"""Backbones (torchvision definitions) and conv-type injection."""

from a2d2c.models.backbones import BACKBONES, STEMS, build_classifier
from a2d2c.models.convert import CONVERT_MODES, convert_convs, find_stem_conv, init_conv_kernels

__all__ = [
    "BACKBONES",
    "CONVERT_MODES",
    "STEMS",
    "build_classifier",
    "convert_convs",
    "find_stem_conv",
    "init_conv_kernels",
]
