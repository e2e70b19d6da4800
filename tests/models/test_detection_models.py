"""Detectors over every backbone × conv type: build, one training step, one evaluation; heads, frozen BN, stages."""
import math
from functools import partial

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models import mobilenet_v2, mobilenet_v3_small
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from a2d2c.data.coco import detection_collate
from a2d2c.data.shapes import build_shapes
from a2d2c.engine.tasks.coco_eval import COCO_METRICS
from a2d2c.engine.tasks.detection import DetectionTask
from a2d2c.layers import CONV_TYPES, MixtureConv2d
from a2d2c.models import BACKBONES, build_classifier
from a2d2c.models.detection import DETECTORS, build_detector
from a2d2c.errors import ConfigError

# Fewer proposals and sampled RoIs than torchvision's defaults: the same code paths, a fraction of the CPU time.
FAST = {
    "fasterrcnn": dict(rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
                       rpn_post_nms_top_n_test=50, box_batch_size_per_image=64),
    "retinanet": dict(topk_candidates=100, detections_per_img=50),
}
SMALL = dict(min_size=128, max_size=128, fpn_channels=32, anchor_sizes=(16, 32, 64, 128, 256))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return {split: build_shapes(root, split, num_train=4, num_val=2) for split in ("train", "val")}


def small_detector(name, backbone="resnet10", conv_type="static", **kwargs):
    return build_detector(name, backbone, conv_type, 3, **SMALL, detector_options=FAST[name], **kwargs)


def one_step_and_evaluation(task, shapes):
    model = task.build_model().train()
    batch = next(iter(DataLoader(shapes["train"], batch_size=2, collate_fn=task.collate_fn)))
    loss, metrics = task.training_step(model, task.move_batch(batch, torch.device("cpu")))
    assert math.isfinite(loss.item()) and metrics["loss"] == loss.detach()
    assert len(metrics) > 2 and all(math.isfinite(v.item()) for v in metrics.values())  # each loss of the dict
    loss.backward()
    stage_grads = [p.grad for n, p in model.backbone.body.named_parameters() if p.requires_grad]
    assert stage_grads and all(g is not None for g in stage_grads) and any(g.abs().sum() > 0 for g in stage_grads)

    loader = DataLoader(shapes["val"], batch_size=2, collate_fn=task.collate_fn)
    results = task.evaluate(model, loader, torch.device("cpu"))
    assert model.training  # evaluation gives the model back in the mode it found it
    assert set(results) == {*COCO_METRICS, "samples"} and results["samples"] == 2
    assert all(0.0 <= results[k] <= 1.0 or math.isnan(results[k]) for k in COCO_METRICS)
    return model


@pytest.mark.parametrize("conv_type", CONV_TYPES)
@pytest.mark.parametrize("name", DETECTORS)
def test_every_detector_and_conv_type_trains_a_step_and_evaluates_on_shapes(name, conv_type, shapes):
    task = DetectionTask(partial(small_detector, name, "resnet10", conv_type, convert_head=True))
    model = one_step_and_evaluation(task, shapes)
    converted = [m for m in model.modules() if isinstance(m, MixtureConv2d)]
    assert bool(converted) == (conv_type != "static")


def test_mobilenet_retinanet_with_dynamic_head_trains_and_evaluates(shapes):
    task = DetectionTask(partial(small_detector, "retinanet", "mobilenetv3_small", "a2d2c_plus", convert_head=True),
                         conv_options={"num_kernels": 2})
    model = one_step_and_evaluation(task, shapes)
    assert {m.num_kernels for m in model.modules() if isinstance(m, MixtureConv2d)} == {2}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_gets_an_fpn_at_strides_4_to_64(backbone):
    model = build_detector("fasterrcnn", backbone, "static", 3, min_size=64, max_size=64, fpn_channels=16,
                           detector_options=FAST["fasterrcnn"]).eval()
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 64, 64))
        (output,) = model([torch.rand(3, 64, 64)])
    assert {k: v.shape[-1] for k, v in features.items()} == {"0": 16, "1": 8, "2": 4, "3": 2, "pool": 1}
    assert all(v.shape[1] == 16 for v in features.values())
    assert output["boxes"].shape[1] == 4 and len(output["scores"]) == len(output["labels"])


def test_static_resnet50_detectors_are_torchvisions():
    from torchvision.models.detection import fasterrcnn_resnet50_fpn, retinanet_resnet50_fpn

    for ours, theirs in ((build_detector("fasterrcnn", "resnet50", num_classes=90), fasterrcnn_resnet50_fpn),
                         (build_detector("retinanet", "resnet50", num_classes=90), retinanet_resnet50_fpn)):
        reference = theirs(weights=None, weights_backbone=None, num_classes=91)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


@pytest.mark.parametrize("name", DETECTORS)
def test_convert_head_converts_fpn_and_head_convs_but_not_the_predictors(name):
    plain = small_detector(name, conv_type="dynamic")
    head = plain.rpn.head if name == "fasterrcnn" else plain.head
    assert isinstance(plain.backbone.body.layer1[0].conv1, MixtureConv2d)
    assert isinstance(plain.backbone.body.conv1, nn.Conv2d)  # the stem stays static, as in DyConv
    assert not any(isinstance(m, MixtureConv2d) for m in [*plain.backbone.fpn.modules(), *head.modules()])

    converted = small_detector(name, conv_type="dynamic", convert_head=True)
    fpn_convs = [m for m in converted.backbone.fpn.modules() if isinstance(m, (nn.Conv2d, MixtureConv2d))]
    assert fpn_convs and all(isinstance(m, MixtureConv2d) for m in fpn_convs)
    head = converted.rpn.head if name == "fasterrcnn" else converted.head
    predictors = ({"cls_logits", "bbox_pred"} if name == "fasterrcnn"
                  else {"classification_head.cls_logits", "regression_head.bbox_reg"})
    for module_name, module in head.named_modules():
        if module_name in predictors:
            assert type(module) is nn.Conv2d, module_name
        elif isinstance(module, (nn.Conv2d, MixtureConv2d)) and not module_name.startswith(tuple(predictors)):
            assert isinstance(module, MixtureConv2d), module_name
    if name == "retinanet":  # the prior-probability init of the class logits survives
        bias = converted.head.classification_head.cls_logits.bias
        assert torch.allclose(bias, torch.full_like(bias, -math.log(99)))


def trainable_names(module, prefix=""):
    return {n.removeprefix(prefix) for n, p in module.named_parameters() if p.requires_grad and n.startswith(prefix)}


@pytest.mark.parametrize("layers", [0, 2, 3, 5])
def test_trainable_resnet_stages_match_torchvision(layers):
    ours = small_detector("fasterrcnn", "resnet18", trainable_layers=layers, frozen_bn=False)
    reference = _resnet_fpn_extractor(build_classifier("resnet18"), layers)
    assert trainable_names(ours.backbone.body) == trainable_names(reference.body)
    assert trainable_names(ours.backbone.fpn)  # the FPN always trains


@pytest.mark.parametrize("layers", [0, 2, 6])
@pytest.mark.parametrize("backbone, constructor", [("mobilenetv2_x0_35", partial(mobilenet_v2, width_mult=0.35)),
                                                    ("mobilenetv3_small", mobilenet_v3_small)])
def test_trainable_mobilenet_stages_match_torchvision(backbone, constructor, layers):
    ours = small_detector("retinanet", backbone, trainable_layers=layers)
    reference = _mobilenet_extractor(constructor(), False, layers)[0]  # its features, with torchvision's freezing
    assert trainable_names(ours.backbone.body) == trainable_names(reference)


def test_frozen_bn_replaces_every_backbone_bn_and_frozen_stages_get_no_gradient(shapes):
    model = small_detector("fasterrcnn", "resnet10", "dynamic", frozen_bn=True, trainable_layers=2).train()
    body = model.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in body.modules()) == 12  # resnet10's BNs, downsamples included
    stats = body.layer3[0].bn1.running_mean.clone()
    images, targets = detection_collate([shapes["train"][0], shapes["train"][1]])
    sum(model(images, targets).values()).backward()
    assert all(p.grad is None for n, p in body.named_parameters() if not n.startswith(("layer3", "layer4")))
    assert body.layer3[0].conv1.weight.grad is not None and body.layer3[0].bn1.weight.grad is None
    assert torch.equal(body.layer3[0].bn1.running_mean, stats)

    scratch = small_detector("fasterrcnn", "resnet10")  # torchvision's default without pretrained weights
    assert any(isinstance(m, nn.BatchNorm2d) for m in scratch.backbone.body.modules())
    assert all(p.requires_grad for p in scratch.backbone.body.parameters())


def test_backbone_weights_are_loaded_and_switch_to_torchvisions_pretrained_defaults(tmp_path):
    classifier = build_classifier("resnet10", "a2d2c_plus", num_classes=7)
    torch.save({"model": classifier.state_dict(), "config": {}}, tmp_path / "run.pt")
    model = small_detector("fasterrcnn", "resnet10", "a2d2c_plus", backbone_weights=tmp_path / "run.pt")
    body = model.backbone.body
    assert torch.equal(body.layer2[0].conv1.weight, classifier.layer2[0].conv1.weight)
    assert torch.equal(body.layer1[0].bn1.running_var, classifier.layer1[0].bn1.running_var)
    assert isinstance(body.bn1, FrozenBatchNorm2d)  # pretrained: frozen BN and 3 trainable stages
    assert {n.split(".")[0] for n in trainable_names(body)} == {"layer2", "layer3", "layer4"}

    with pytest.raises(ConfigError, match="do not fit this backbone and conv type") as error:
        small_detector("fasterrcnn", "resnet10", "static", backbone_weights=tmp_path / "run.pt")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="cannot read backbone weights"):
        small_detector("fasterrcnn", "resnet10", backbone_weights=tmp_path / "missing.pt")


def test_backbone_weights_saved_before_temperature_was_model_state_still_load(tmp_path):
    classifier = build_classifier("resnet10", "dynamic", num_classes=7)
    old = {k: v for k, v in classifier.state_dict().items() if not k.endswith(".temperature")}
    torch.save({"model": old, "config": {}}, tmp_path / "old.pt")
    model = small_detector("fasterrcnn", "resnet10", "dynamic", backbone_weights=tmp_path / "old.pt")
    assert torch.equal(model.backbone.body.layer2[0].conv1.weight, classifier.layer2[0].conv1.weight)


def test_bad_arguments_end_with_one_line():
    with pytest.raises(ValueError, match="unknown detector 'yolo'; valid: fasterrcnn, retinanet"):
        build_detector("yolo", "resnet10")
    with pytest.raises(ValueError, match="trainable_layers=6 is out of range for resnet10: 0 to 5"):
        build_detector("fasterrcnn", "resnet10", trainable_layers=6)
    with pytest.raises(ValueError, match="one size per FPN level"):
        build_detector("retinanet", "resnet10", anchor_sizes=(32, 64))
    task = DetectionTask(partial(build_detector, "fasterrcnn", "resnet10", "dynamic"), conv_options={"kernels": 4})
    with pytest.raises(ConfigError, match="kernels"):
        task.build_model()
