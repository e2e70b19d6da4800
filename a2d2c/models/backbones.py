"""Classification backbones: torchvision's definitions with a chosen conv type.

``build_classifier`` builds the static torchvision model (no pretrained weights), optionally
swaps its stem for CIFAR-size inputs, optionally loads a static model's weights, then converts
its convs to the chosen conv type. Static models therefore have exactly torchvision's parameter
counts.
"""

from __future__ import annotations

import difflib
from functools import partial
from typing import Callable, Iterable, NamedTuple, Optional

from torch import nn
from torchvision.models import mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from a2d2c.models.convert import convert_convs, find_stem_conv, init_conv_kernels
from a2d2c.models.weights import load_classifier_weights

__all__ = ["BACKBONES", "KEEP_STATIC", "STEMS", "build_classifier"]


class _Backbone(NamedTuple):
    family: str  # "resnet", "mobilenetv2" or "mobilenetv3": decides stem and dropout handling
    build: Callable[..., nn.Module]  # torchvision constructor: build(num_classes=...)
    # exclude patterns (as ``convert_convs``) of the convs that stay static by default, for every
    # conv type: the backbone's part of the conversion layout, on top of the conv's ``exclude``.
    keep_static: tuple = ()


def _resnet(block: type, layers: list) -> _Backbone:
    return _Backbone("resnet", partial(ResNet, block, layers))


# MobileNetV2's last 1x1 conv (features.18, 320 -> 1280 at x1.0) stays static: with it dynamic,
# DY-MobileNetV2 has 12.4M / 7.9M / 4.6M / 3.1M params (x1.0 / x0.75 / x0.5 / x0.35) against the
# DyConv paper's 11.1M / 7.0M / 4.0M / 2.8M; kept static, 11.15M / 7.01M / 3.95M / 2.69M, so it is
# very likely the paper's choice (the paper does not say). A2D2C has no published counts; a2d2c and
# a2d2c_plus keep the same layout, so that every conv type converts the same layers.
_MOBILENET_V2_STATIC = ("features.18",)
# MobileNetV3's squeeze-excitation 1x1 convs (fc1, fc2) stay static: they act on a 1x1 pooled map
# and are already an input-dependent (attention) branch; converted, they were 18 of
# MobileNetV3-Small's 51 dynamic convs.
_MOBILENET_V3_STATIC = ("features.*.block.*.fc1", "features.*.block.*.fc2")


def _mobilenet_v2(width_mult: float) -> _Backbone:
    return _Backbone("mobilenetv2", partial(mobilenet_v2, weights=None, width_mult=width_mult),
                     _MOBILENET_V2_STATIC)


def _mobilenet_v3(build: Callable[..., nn.Module]) -> _Backbone:
    return _Backbone("mobilenetv3", partial(build, weights=None), _MOBILENET_V3_STATIC)


_BACKBONES = {
    "resnet10": _resnet(BasicBlock, [1, 1, 1, 1]),
    "resnet18": _resnet(BasicBlock, [2, 2, 2, 2]),
    "resnet34": _resnet(BasicBlock, [3, 4, 6, 3]),
    "resnet50": _resnet(Bottleneck, [3, 4, 6, 3]),
    "mobilenetv2_x1_0": _mobilenet_v2(1.0),
    "mobilenetv2_x0_75": _mobilenet_v2(0.75),
    "mobilenetv2_x0_5": _mobilenet_v2(0.5),
    "mobilenetv2_x0_35": _mobilenet_v2(0.35),
    "mobilenetv3_small": _mobilenet_v3(mobilenet_v3_small),
    "mobilenetv3_large": _mobilenet_v3(mobilenet_v3_large),
}

BACKBONES = tuple(_BACKBONES)
# Each backbone's default ``keep_static`` patterns.
KEEP_STATIC = {name: backbone.keep_static for name, backbone in _BACKBONES.items()}

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
    keep_static: Optional[Iterable[str]] = None,
    init_weights: Optional[str] = None,
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
        keep_static: more such patterns, the backbone's part of the layout. None: the backbone's
            default (``KEEP_STATIC``: MobileNetV2's last 1x1 conv, MobileNetV3's squeeze-excitation
            convs, as DyConv); [] converts those too.
        init_weights: a static model's weights (a torchvision state dict, or an a2d2c checkpoint
            of a static run: its "model" entry), loaded into the static network before conversion;
            the converted convs then start from them with the same function (``inflate=True``).
            The classifier head is loaded when it has this model's number of classes.
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
    if init_weights is not None:
        load_classifier_weights(model, init_weights, what="init weights", target=f"a static {name}",
                                hint=f"use a static {name}'s state dict (torchvision's keys, stem={stem})",
                                head="if_fits")
    keep_static = backbone.keep_static if keep_static is None else keep_static
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    keep_static = [keep_static] if isinstance(keep_static, str) else list(keep_static)
    # Convert last, so "all_but_stem" keeps the stem actually used (the CIFAR one if swapped).
    return convert_convs(model, conv_type, convert=convert, exclude=exclude + keep_static,
                         inflate=init_weights is not None, **conv_options)
