"""Backbones and conv-type injection: shapes, gradients, parameter counts, stems, knobs."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from a2d2c.layers import CONV_TYPES, A2D2CConv2d, A2D2CPlusConv2d, CondConv2d, DynamicConv2d, MixtureConv2d, ODConv2d
from a2d2c.models import BACKBONES, build_classifier, convert_convs

DYNAMIC_TYPES = tuple(t for t in CONV_TYPES if t != "static")
CONV_CLASSES = {"dynamic": DynamicConv2d, "a2d2c": A2D2CConv2d, "a2d2c_plus": A2D2CPlusConv2d,
                "condconv": CondConv2d, "odconv": ODConv2d}
HYPER_PARAMETERS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                    "groups")

# The smallest model of each family, for tests that need one per family.
FAST_BACKBONES = ("resnet10", "mobilenetv2_x0_35", "mobilenetv3_small")
# Forward/backward of these with a dynamic conv type takes seconds each on a 2-core CPU.
HEAVY_BACKBONES = ("resnet34", "resnet50")

TORCHVISION_REFERENCES = {
    "resnet10": lambda: ResNet(BasicBlock, [1, 1, 1, 1]),
    "resnet18": lambda: torchvision.models.resnet18(weights=None),
    "resnet34": lambda: torchvision.models.resnet34(weights=None),
    "resnet50": lambda: torchvision.models.resnet50(weights=None),
    "mobilenetv2_x1_0": lambda: torchvision.models.mobilenet_v2(weights=None, width_mult=1.0),
    "mobilenetv2_x0_75": lambda: torchvision.models.mobilenet_v2(weights=None, width_mult=0.75),
    "mobilenetv2_x0_5": lambda: torchvision.models.mobilenet_v2(weights=None, width_mult=0.5),
    "mobilenetv2_x0_35": lambda: torchvision.models.mobilenet_v2(weights=None, width_mult=0.35),
    "mobilenetv3_small": lambda: torchvision.models.mobilenet_v3_small(weights=None),
    "mobilenetv3_large": lambda: torchvision.models.mobilenet_v3_large(weights=None),
}


def num_params(model):
    return sum(p.numel() for p in model.parameters())


def conv_names(model):
    """Names of the nn.Conv2d modules of a static model, in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def static_conv_names(model, names):
    """Which of ``names`` (convs of the static model) are still plain nn.Conv2d in ``model``."""
    return [name for name in names if type(model.get_submodule(name)) is nn.Conv2d]


def grid(backbones):
    for name in backbones:
        for conv_type in CONV_TYPES:
            slow = name in HEAVY_BACKBONES and conv_type != "static"
            marks = [pytest.mark.slow] if slow else []
            yield pytest.param(name, conv_type, marks=marks, id=f"{name}-{conv_type}")


# --------------------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("name, conv_type", list(grid(BACKBONES)))
def test_forward_backward_cifar(name, conv_type):
    model = build_classifier(name, conv_type, num_classes=10, stem="cifar")

    model.train()
    for batch in (1, 2):
        model.zero_grad(set_to_none=True)
        out = model(torch.randn(batch, 3, 32, 32))
        assert out.shape == (batch, 10)
        F.cross_entropy(out, torch.arange(batch)).backward()
        for pname, p in model.named_parameters():
            # Every parameter takes part in the forward: one without a gradient would also
            # break DDP (unused parameters).
            assert p.grad is not None, f"{pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"

    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out2 = model(x)
        out1 = model(x[:1])
    assert out2.shape == (2, 10) and out1.shape == (1, 10)
    assert torch.isfinite(out2).all()
    # In eval mode samples are independent: the per-sample attention of a dynamic conv must
    # not mix the batch.
    scale = out2.abs().max().item()
    torch.testing.assert_close(out1, out2[:1], rtol=1e-4, atol=1e-4 * scale)


# --------------------------------------------------------------------------- static = torchvision


@pytest.mark.parametrize("name", BACKBONES)
def test_static_matches_torchvision(name):
    model = build_classifier(name, "static", num_classes=1000)
    reference = TORCHVISION_REFERENCES[name]()
    assert num_params(model) == num_params(reference)
    # Same modules and state_dict keys: torchvision checkpoints load strictly, and then the
    # two models compute the same function.
    model.load_state_dict(reference.state_dict(), strict=True)
    model.eval()
    reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


@pytest.mark.parametrize("name", FAST_BACKBONES)
def test_num_classes_imagenet_stem(name):
    model = build_classifier(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


# --------------------------------------------------------------------------- dropout


def dropouts(model):
    return [m.p for m in model.modules() if isinstance(m, nn.Dropout)]


def test_dropout_defaults_are_torchvisions():
    assert dropouts(build_classifier("resnet18")) == []
    assert dropouts(build_classifier("mobilenetv2_x1_0")) == [0.2]
    assert dropouts(build_classifier("mobilenetv3_small")) == [0.2]


@pytest.mark.parametrize(
    "name, p", [("resnet18", 0.1), ("mobilenetv2_x1_0", 0.3), ("mobilenetv3_large", 0.1)])
def test_dropout_is_set_without_changing_params(name, p):
    model = build_classifier(name, dropout=p)
    assert dropouts(model) == [p]
    reference = TORCHVISION_REFERENCES[name]()
    assert num_params(model) == num_params(reference)
    model.load_state_dict(reference.state_dict(), strict=True)


def test_resnet_dropout_is_active_in_training_only():
    model = build_classifier("resnet10", dropout=0.5, num_classes=3, stem="cifar")
    model.fc.register_forward_hook(lambda module, args, out: features.append(args[0]))
    features = []
    with torch.no_grad():
        model.train()(torch.randn(2, 3, 32, 32))
        model.eval()(torch.randn(2, 3, 32, 32))
    # After ReLU and average pooling every feature is positive; dropout zeroes about half.
    assert 0.3 < (features[0] == 0).float().mean() < 0.7
    assert (features[1] == 0).float().mean() < 0.1


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_bad_dropout(p):
    with pytest.raises(ValueError, match="dropout"):
        build_classifier("resnet10", dropout=p)


# --------------------------------------------------------------------------- stems


def test_cifar_stem_resnet():
    model = build_classifier("resnet18", stem="cifar")
    stem = model.conv1
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (1, 1))
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    # The stem conv changes 7x7 -> 3x3: exactly that many parameters fewer than torchvision's.
    assert num_params(model) == num_params(torchvision.models.resnet18()) - 64 * 3 * (49 - 9)
    # Total stride 8 instead of 32: layer4 keeps 4x4 maps for 32x32 inputs.
    features = nn.Sequential(*list(model.children())[:-2]).eval()
    with torch.no_grad():
        assert features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)


@pytest.mark.parametrize("name", ["mobilenetv2_x0_5", "mobilenetv3_small"])
def test_cifar_stem_mobilenet(name):
    imagenet = build_classifier(name).eval()
    cifar = build_classifier(name, stem="cifar").eval()
    stem = cifar.features[0][0]
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (1, 1))
    assert num_params(cifar) == num_params(imagenet)
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        assert cifar.features(x).shape[-1] == 2 * imagenet.features(x).shape[-1]


@pytest.mark.parametrize("conv_type", DYNAMIC_TYPES)
def test_cifar_stem_is_the_kept_static_conv(conv_type):
    model = build_classifier("resnet10", conv_type, stem="cifar")
    assert type(model.conv1) is nn.Conv2d and model.conv1.kernel_size == (3, 3)


# --------------------------------------------------------------------------- user errors


def assert_one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_unknown_backbone():
    message = assert_one_line_error("unknown backbone 'resnet81'", build_classifier, "resnet81")
    assert all(name in message for name in BACKBONES)
    assert "did you mean 'resnet18'?" in message


def test_unknown_stem():
    message = assert_one_line_error(
        "unknown stem 'cifar10'", build_classifier, "resnet10", stem="cifar10")
    assert message.endswith("valid: imagenet, cifar")


def test_unknown_conv_type_and_convert_mode():
    assert_one_line_error("unknown conv type 'dynamc'", build_classifier, "resnet10", "dynamc")
    assert_one_line_error("unknown convert mode 'most'.*all_but_stem",
                          build_classifier, "resnet10", "dynamic", convert="most")


def test_conv_options_are_checked():
    assert_one_line_error("static", build_classifier, "resnet10", "static", num_kernels=4)
    # A misspelt option fails even where nothing gets converted.
    assert_one_line_error("'num_kernel'.*valid options: num_kernels",
                          build_classifier, "resnet10", "dynamic", convert="none", num_kernel=4)


def test_conv_options_are_passed():
    model = build_classifier("resnet10", "dynamic", num_kernels=2, temperature=30.0)
    convs = [m for m in model.modules() if isinstance(m, DynamicConv2d)]
    assert convs and all(m.num_kernels == 2 and m.temperature == 30.0 for m in convs)
    assert all(m.weight.shape[0] == 2 for m in convs)


# --------------------------------------------------------------------------- which convs convert


def kept_static_by_default(name, names):
    """The backbone's default static convs, besides the stem: MobileNetV2's last 1x1 conv,
    MobileNetV3's squeeze-excitation convs (the DyConv paper's counts; see backbones.py)."""
    if name.startswith("mobilenetv2"):
        return [n for n in names if n.startswith("features.18.")]
    if name.startswith("mobilenetv3"):
        return [n for n in names if n.endswith((".fc1", ".fc2"))]
    return []


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("conv_type", DYNAMIC_TYPES)
def test_all_but_stem_keeps_hyper_parameters(name, conv_type):
    static = build_classifier(name, "static", num_classes=10, stem="cifar")
    model = build_classifier(name, conv_type, num_classes=10, stem="cifar")
    names = conv_names(static)
    kept = kept_static_by_default(name, names)
    assert static_conv_names(model, names) == [names[0]] + kept
    assert bool(kept) == name.startswith("mobilenet")
    for conv_name in [n for n in names[1:] if n not in kept]:
        old, new = static.get_submodule(conv_name), model.get_submodule(conv_name)
        assert type(new) is CONV_CLASSES[conv_type], conv_name
        for attr in HYPER_PARAMETERS:
            assert getattr(new, attr) == getattr(old, attr), (conv_name, attr)
        assert (new.bias is None) == (old.bias is None), conv_name
    assert num_params(model) > num_params(static)


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small"])
def test_convert_all_and_none(name):
    names = conv_names(build_classifier(name))
    kept = kept_static_by_default(name, names)
    assert static_conv_names(build_classifier(name, "dynamic", convert="all"), names) == kept
    assert static_conv_names(build_classifier(name, "dynamic", convert="all", keep_static=[]), names) == []
    assert static_conv_names(build_classifier(name, "dynamic", convert="none"), names) == names
    static = build_classifier(name, "static", convert="all")
    assert num_params(static) == num_params(TORCHVISION_REFERENCES[name]())


@pytest.mark.parametrize("name", ["mobilenetv2_x0_35", "mobilenetv3_small"])
def test_keep_static_overrides_the_backbone_default(name):
    names = conv_names(build_classifier(name))
    assert static_conv_names(build_classifier(name, "dynamic", keep_static=[]), names) == names[:1]
    model = build_classifier(name, "a2d2c", keep_static=["features.1"], exclude=["features.2"])
    assert static_conv_names(model, names) == [n for n in names if n.startswith(("features.0.", "features.1.",
                                                                                 "features.2."))]
    with pytest.raises(ValueError, match="matches no module"):
        build_classifier(name, "dynamic", keep_static=["layer4"])


def test_exclude_patterns():
    names = conv_names(build_classifier("resnet18"))
    model = build_classifier("resnet18", "dynamic", exclude=["fc", "layer4.*.downsample.*"])
    assert static_conv_names(model, names) == ["conv1", "layer4.0.downsample.0"]
    # A pattern naming a container keeps every conv inside it static.
    model = build_classifier("resnet18", "a2d2c", exclude=["layer4"])
    layer4 = [n for n in names if n.startswith("layer4.")]
    assert static_conv_names(model, names) == ["conv1"] + layer4
    assert isinstance(model.layer3[0].downsample[0], MixtureConv2d)


def test_exclude_pattern_matching_nothing_is_an_error():
    assert_one_line_error("exclude pattern 'layr4.\\*'",
                          build_classifier, "resnet18", "dynamic", exclude=["layr4.*"])


def test_convert_twice_leaves_operator_internals_alone():
    # The a2d2c layers hold a plain nn.Conv2d (the local attention conv); converting again
    # must not turn it into a dynamic conv.
    model = build_classifier("resnet10", "a2d2c")
    before = {name: type(m) for name, m in model.named_modules()}
    convert_convs(model, "a2d2c")
    assert {name: type(m) for name, m in model.named_modules()} == before


# --------------------------------------------------------------------------- converter on any model


@pytest.mark.parametrize("conv_type", DYNAMIC_TYPES)
def test_convert_custom_model_keeps_hyper_parameters(conv_type):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2, groups=4, bias=True),
        nn.Conv2d(12, 12, (3, 5), padding=(1, 2), groups=12),
        nn.Conv2d(12, 6, 1),
    ).double().eval()
    reference = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    x = torch.randn(2, 3, 17, 17, dtype=torch.float64)
    shape = model(x).shape
    convert_convs(model, conv_type, convert="all")
    for name, old in reference.items():
        new = model.get_submodule(name)
        assert isinstance(new, MixtureConv2d)
        for attr in HYPER_PARAMETERS:
            assert getattr(new, attr) == getattr(old, attr), (name, attr)
        assert (new.bias is None) == (old.bias is None)
        # New convs take the original's dtype and train/eval mode.
        assert all(p.dtype == torch.float64 for p in new.parameters()) and not new.training
    with torch.no_grad():
        assert model(x).shape == shape


def test_string_padding_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, padding="same"))
    assert_one_line_error("padding='same'", convert_convs, model, "dynamic")


# --------------------------------------------------------------------------- initialisation


def kaiming_fan_out_std(kernel):
    out_channels, _, kh, kw = kernel.shape
    return math.sqrt(2.0 / (out_channels * kh * kw))


@pytest.mark.parametrize("conv_type", ["dynamic", "a2d2c"])
def test_each_candidate_kernel_gets_torchvision_init(conv_type):
    model = build_classifier("resnet18", conv_type)
    weight = model.layer4[0].conv2.weight  # K x 512 x 512 x 3 x 3
    assert weight.dim() == 5
    for kernel in weight:
        # 5-D fan computation would give std sqrt(2 / (K * 512 * 9)), half of this.
        assert kernel.std().item() == pytest.approx(kaiming_fan_out_std(kernel), rel=0.03)
        assert abs(kernel.mean().item()) < 1e-3
    assert not torch.equal(weight[0], weight[1])


def test_a2d2c_plus_static_kernel_gets_torchvision_init():
    model = build_classifier("resnet18", "a2d2c_plus")
    conv = model.layer4[0].conv2
    assert conv.weight.dim() == 4
    assert conv.weight.std().item() == pytest.approx(kaiming_fan_out_std(conv.weight), rel=0.03)


def test_cifar_stem_and_biases_init():
    model = build_classifier("resnet50", stem="cifar")
    stem = model.conv1.weight
    assert stem.std().item() == pytest.approx(kaiming_fan_out_std(stem), rel=0.1)
    # MobileNetV3's squeeze-excitation convs have biases: zero, as torchvision initialises them
    # (converted here with keep_static=[]; they stay static by default).
    model = build_classifier("mobilenetv3_small", "dynamic", keep_static=[])
    biased = [m for m in model.modules() if isinstance(m, DynamicConv2d) and m.bias is not None]
    assert biased and all(torch.count_nonzero(m.bias) == 0 for m in biased)


def test_an_earlier_a2d2c_plus_checkpoint_is_named_as_such():
    from a2d2c.checkpoint.files import load_weights
    from a2d2c.errors import ConfigError
    model = build_classifier("resnet10", "a2d2c_plus", num_classes=10, stem="cifar")
    # the earlier form's head: one 3x3 conv 2K -> K and no per-logit-map conv
    old = {k: (torch.zeros(4, 8, 3, 3) if k.endswith("local_attention.conv.weight") else v)
           for k, v in model.state_dict().items() if not k.endswith("local_attention.spatial.weight")}
    with pytest.raises(ConfigError, match=r"earlier formulation .*commit b477592") as e:
        load_weights(model, old, "old.pt")
    assert "\n" not in str(e.value)
    other = build_classifier("resnet10", "a2d2c_plus", num_classes=7, stem="cifar").state_dict()
    with pytest.raises(ConfigError, match="another backbone, conv type or class count"):
        load_weights(model, other, "other.pt")
