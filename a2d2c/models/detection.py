"""Detectors: torchvision's Faster R-CNN and RetinaNet with an FPN over our converted backbones.

The backbone is ``build_classifier``'s network (so any backbone × conv type), cut before its
classifier. The FPN reads four stages at strides 4, 8, 16 and 32 on every backbone: ResNet's
layer1..4, and for MobileNetV2/V3 the last block before each stride-2 block plus the last
layer (torchvision's ``_mobilenet_extractor`` finds the stages the same way, through the blocks'
``_is_cn`` flag, but returns only the last two). So every backbone gets the same FPN levels and
anchors, as in torchvision's ResNet-FPN detectors: Faster R-CNN uses P2-P5 plus a max-pooled P6,
RetinaNet P3-P5 plus P6 and P7 computed from P5.

Frozen BN and the number of trainable stages follow torchvision: with pretrained backbone
weights (``backbone_weights``, a checkpoint from a classification run) BN is frozen and the top
3 stages train; from scratch BN trains and every stage trains (torchvision warns and does the
same, as frozen random layers could not learn).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.resnet import ResNet
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from a2d2c.models.backbones import build_classifier
from a2d2c.models.convert import convert_convs
from a2d2c.models.weights import load_classifier_weights

__all__ = ["DETECTORS", "build_detector", "freeze_batch_norm", "load_backbone_weights"]

DETECTORS = ("fasterrcnn", "retinanet")
DEFAULT_ANCHOR_SIZES = (32, 64, 128, 256, 512)  # torchvision's, one size per FPN level
ASPECT_RATIOS = (0.5, 1.0, 2.0)

# The output layers of the heads stay static under convert_head, like a classifier's final
# Linear: they have their own initialisation (RetinaNet's prior-probability bias) that a
# converted conv would lose.
_HEAD_PREDICTORS = {
    "fasterrcnn": ("cls_logits", "bbox_pred"),  # of rpn.head
    "retinanet": ("classification_head.cls_logits", "regression_head.bbox_reg"),  # of head
}


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d under `module` by a FrozenBatchNorm2d with its statistics and affine terms."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps).to(child.running_mean.device)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key))
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child)
    return module


def load_backbone_weights(classifier: nn.Module, path) -> None:
    """Load a classification checkpoint (an a2d2c run's .pt, or a plain state_dict) into `classifier`.

    Every tensor but the classifier head's must be there with the same shape: same backbone,
    conv type and conv options, torchvision's stem.
    """
    load_classifier_weights(classifier, path, what="backbone weights", target="this backbone and conv type",
                            hint="use a checkpoint of the same backbone, conv type and stem=imagenet")


def _resnet_stages(model: ResNet):
    """(body, stage module names from input to output, {FPN layer name: channels}) for a ResNet."""
    stages = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    stage2_channels = model.inplanes // 8  # torchvision: 64 for BasicBlock nets, 256 for Bottleneck
    levels = {f"layer{i}": stage2_channels * 2 ** (i - 1) for i in range(1, 5)}
    return model, stages, levels


def _mobilenet_stages(model: nn.Module):
    """The same for MobileNetV2/V3: stages split at the stride-2 blocks (torchvision's), levels at stage ends."""
    features = model.features
    strided = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
    starts = [0] + strided + [len(features) - 1]  # torchvision's `stage_indices`
    stages = [[str(i) for i in range(a, b)] for a, b in zip(starts, starts[1:])] + [[str(len(features) - 1)]]
    # Each stride-2 block starts a new resolution, so the block before it ends the previous one.
    ends = [i - 1 for i in strided] + [len(features) - 1]
    levels = {str(i): features[i].out_channels for i in ends[-4:]}  # strides 4, 8, 16, 32
    return features, stages, levels


def _freeze_stages(body: nn.Module, stages: list, trainable_layers: int) -> None:
    top = stages[len(stages) - trainable_layers:] if trainable_layers else []
    trainable = {name for stage in top for name in stage}
    for name, parameter in body.named_parameters():
        if name.split(".", 1)[0] not in trainable:
            parameter.requires_grad_(False)


def _anchor_generator(sizes: Sequence[int], octaves: int) -> AnchorGenerator:
    # RetinaNet puts 3 octave scales (2^0, 2^1/3, 2^2/3) at each level, Faster R-CNN one size.
    per_level = tuple(tuple(size * 2 ** (i / octaves) for i in range(octaves)) for size in sizes)
    return AnchorGenerator(per_level, (ASPECT_RATIOS,) * len(sizes))


def build_detector(
    name: str,
    backbone: str,
    conv_type: str = "static",
    num_classes: int = 80,
    *,
    convert_head: bool = False,
    trainable_layers: Optional[int] = None,
    frozen_bn: Optional[bool] = None,
    backbone_weights: Optional[str] = None,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: Optional[Sequence[int]] = None,
    fpn_channels: int = 256,
    detector_options: Optional[dict] = None,
    convert: str = "all_but_stem",
    exclude: Sequence[str] = (),
    keep_static: Optional[Sequence[str]] = None,
    init_weights: Optional[str] = None,
    **conv_options,
) -> nn.Module:
    """A torchvision detector over `backbone` (one of ``BACKBONES``) with `conv_type` convs.

    Args:
        name: "fasterrcnn" or "retinanet".
        num_classes: object categories, without the background (the detector gets one more
            output for it; labels are 1..num_classes).
        convert_head: also convert the FPN and the RPN / RetinaNet head convs to `conv_type`
            (their final prediction layers stay static). Faster R-CNN's box head is two
            Linear layers, with no conv.
        trainable_layers: backbone stages that train, counted from the top (ResNet: 0-5,
            MobileNet: 0-6). None: 3 with `backbone_weights`, all without (torchvision).
        frozen_bn: FrozenBatchNorm2d in the backbone. None: with `backbone_weights` only.
        backbone_weights: a classification checkpoint of the same backbone and conv type.
        min_size, max_size: the detector's internal resize (torchvision's GeneralizedRCNNTransform).
        anchor_sizes: base anchor size of each of the 5 FPN levels; None: 32..512 (torchvision).
        fpn_channels: FPN width (torchvision: 256).
        detector_options: more keyword arguments of torchvision's FasterRCNN / RetinaNet
            (e.g. box_batch_size_per_image, rpn_post_nms_top_n_train, detections_per_img).
        convert, exclude, keep_static, init_weights, **conv_options: as for ``build_classifier``,
            for the backbone. ``init_weights`` (a static model's weights) counts as pretrained
            for the defaults of ``trainable_layers`` and ``frozen_bn``; it excludes
            ``backbone_weights``.
    """
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; valid: {', '.join(DETECTORS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (object categories, without the background), got {num_classes}")
    anchor_sizes = tuple(anchor_sizes or DEFAULT_ANCHOR_SIZES)
    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes needs one size per FPN level (5), got {list(anchor_sizes)}")

    if backbone_weights is not None and init_weights is not None:
        raise ValueError("give backbone_weights (a checkpoint of this conv type) or init_weights "
                         "(a static model's weights), not both")
    classifier = build_classifier(backbone, conv_type, stem="imagenet", convert=convert, exclude=exclude,
                                  keep_static=keep_static, init_weights=init_weights, **conv_options)
    pretrained = backbone_weights is not None or init_weights is not None
    if backbone_weights is not None:
        load_backbone_weights(classifier, backbone_weights)
    body, stages, levels = _resnet_stages(classifier) if isinstance(classifier, ResNet) else _mobilenet_stages(classifier)
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else len(stages)
    if not 0 <= trainable_layers <= len(stages):
        raise ValueError(f"trainable_layers={trainable_layers} is out of range for {backbone}: 0 to {len(stages)}")
    if frozen_bn is None:
        frozen_bn = pretrained
    if frozen_bn:
        freeze_batch_norm(body)
    _freeze_stages(body, stages, trainable_layers)

    options = dict(detector_options or {})
    names, channels = list(levels), list(levels.values())
    if name == "fasterrcnn":
        fpn = BackboneWithFPN(body, {n: str(i) for i, n in enumerate(names)}, channels, fpn_channels,
                              extra_blocks=LastLevelMaxPool())
        model = FasterRCNN(fpn, num_classes + 1, min_size=min_size, max_size=max_size,
                           rpn_anchor_generator=_anchor_generator(anchor_sizes, 1), **options)
        head = model.rpn.head
    else:
        fpn = BackboneWithFPN(body, {n: str(i) for i, n in enumerate(names[1:])}, channels[1:], fpn_channels,
                              extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
        model = RetinaNet(fpn, num_classes + 1, min_size=min_size, max_size=max_size,
                          anchor_generator=_anchor_generator(anchor_sizes, 3), **options)
        head = model.head
    if convert_head:
        convert_convs(model.backbone.fpn, conv_type, convert="all", **conv_options)
        convert_convs(head, conv_type, convert="all", exclude=_HEAD_PREDICTORS[name], **conv_options)
    return model
