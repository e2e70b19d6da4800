"""Classification backbones: torchvision's definitions with a chosen conv type.

``build_classifier`` builds the static torchvision model (no pretrained weights), optionally
swaps its stem for CIFAR-size inputs, then converts its convs to the chosen conv type. Static
models therefore have exactly torchvision's parameter counts.
"""

from __future__ import annotations

import difflib
from functools import partial
from typing import Callable, Iterable, NamedTuple, Optional

from torch import nn
from torchvision.models import mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from a2d2c.models.convert import convert_convs, find_stem_conv, init_conv_kernels

__all__ = ["BACKBONES", "STEMS", "build_classifier"]


class _Backbone(NamedTuple):
    family: str  # "resnet", "mobilenetv2" or "mobilenetv3": decides stem and dropout handling
    build: Callable[..., nn.Module]  # torchvision constructor: build(num_classes=...)


def _resnet(block: type, layers: list) -> _Backbone:
    return _Backbone("resnet", partial(ResNet, block, layers))


def _mobilenet_v2(width_mult: float) -> _Backbone:
    return _Backbone("mobilenetv2", partial(mobilenet_v2, weights=None, width_mult=width_mult))


_BACKBONES = {
    "resnet10": _resnet(BasicBlock, [1, 1, 1, 1]),
    "resnet18": _resnet(BasicBlock, [2, 2, 2, 2]),
    "resnet34": _resnet(BasicBlock, [3, 4, 6, 3]),
    "resnet50": _resnet(Bottleneck, [3, 4, 6, 3]),
    "mobilenetv2_x1_0": _mobilenet_v2(1.0),
    "mobilenetv2_x0_75": _mobilenet_v2(0.75),
    "mobilenetv2_x0_5": _mobilenet_v2(0.5),
    "mobilenetv2_x0_35": _mobilenet_v2(0.35),
    "mobilenetv3_small": _Backbone("mobilenetv3", partial(mobilenet_v3_small, weights=None)),
    "mobilenetv3_large": _Backbone("mobilenetv3", partial(mobilenet_v3_large, weights=None)),
}

BACKBONES = tuple(_BACKBONES)

# "imagenet": torchvision's stem. "cifar": the usual stem for 32x32 inputs, which keeps the
# full input resolution in the first stage (3x3 stride-1 first conv, no max-pool).
STEMS = ("imagenet", "cifar")


def _lookup(name: str) -> _Backbone:
    if name in _BACKBONES:
        return _BACKBONES[name]
    close = difflib.get_close_matches(str(name), BACKBONES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}{hint}")


def _apply_cifar_stem(model: nn.Module, family: str) -> None:
    if family == "resnet":
        # torchvision's ResNet stem is a 7x7/2 conv then a 3x3/2 max-pool: a 4x downsampling
        # that leaves 1x1 maps in layer4 for 32x32 inputs.
        stem = model.conv1
        model.conv1 = nn.Conv2d(stem.in_channels, stem.out_channels, 3, 1, padding=1, bias=False)
        init_conv_kernels(model.conv1)
        model.maxpool = nn.Identity()
    else:
        # MobileNetV2/V3 open with a 3x3/2 conv (padding 1); stride 1 keeps its weights'
        # shape, so the parameter count is unchanged.
        model.get_submodule(find_stem_conv(model)).stride = (1, 1)


def build_classifier(
    name: str,
    conv_type: str = "static",
    num_classes: int = 1000,
    stem: str = "imagenet",
    *,
    dropout: Optional[float] = None,
    convert: str = "all_but_stem",
    exclude: Iterable[str] = (),
    **conv_options,
) -> nn.Module:
    """Build a classification backbone from ``BACKBONES`` with the given conv type.

    Args:
        name: backbone name, one of ``BACKBONES``.
        conv_type: one of ``a2d2c.layers.CONV_TYPES``.
        num_classes: output classes of the final Linear.
        stem: "imagenet" (torchvision's stem) or "cifar" (3x3 stride-1 first conv, no max-pool).
        dropout: dropout before the final Linear. None keeps torchvision's default (0.2 for
            MobileNetV2/V3, none for ResNet); DyConv trains ResNet with 0.1, MobileNetV2 with 0.2.
        convert: which convs become ``conv_type``: "all_but_stem" (as DyConv), "all" or "none".
        exclude: fnmatch patterns on module names whose convs stay static.
        **conv_options: options of the conv type (num_kernels, reduction, temperature, ...).
    """
    backbone = _lookup(name)
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; valid: {', '.join(STEMS)}")
    if dropout is not None and not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")

    if backbone.family == "resnet":
        model = backbone.build(num_classes=num_classes)
        if dropout:
            # torchvision's ResNet has no classifier dropout. It goes after the global pooling,
            # inside ``avgpool``, so the classifier keeps torchvision's name ``fc`` and its
            # state_dict keys, and the parameter count is unchanged.
            model.avgpool = nn.Sequential(model.avgpool, nn.Dropout(dropout))
    else:
        defaults = {} if dropout is None else {"dropout": dropout}
        model = backbone.build(num_classes=num_classes, **defaults)
    if stem == "cifar":
        _apply_cifar_stem(model, backbone.family)
    # Convert last, so "all_but_stem" keeps the stem actually used (the CIFAR one if swapped).
    return convert_convs(model, conv_type, convert=convert, exclude=exclude, **conv_options)
