"""Starting a dynamic model from static weights: convert_convs(inflate=True) and init_weights."""
import copy

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v2, resnet18

from a2d2c.layers import A2D2CPlusConv2d, MixtureConv2d
from a2d2c.models import build_classifier, convert_convs
from a2d2c.models.detection import build_detector
from a2d2c.errors import ConfigError

DYNAMIC_TYPES = ("dynamic", "a2d2c", "a2d2c_plus")
BACKBONES = ("resnet18", "mobilenetv2_x0_5")


def randomise_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, as a trained model has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + 0.5 * torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("conv_type", DYNAMIC_TYPES)
@pytest.mark.parametrize("name", BACKBONES)
def test_inflated_model_computes_the_static_function(name, conv_type, image):
    torch.manual_seed(0)
    static = randomise_batch_norm(build_classifier(name, "static", num_classes=10)).eval()
    with torch.no_grad():
        expected = static(image)
        inflated = convert_convs(copy.deepcopy(static), conv_type, inflate=True)
        redrawn = convert_convs(copy.deepcopy(static), conv_type)
        assert sum(isinstance(m, MixtureConv2d) for m in inflated.modules()) > 10
        assert close(inflated(image), expected)
        assert not close(redrawn(image), expected)


def test_inflated_a2d2c_plus_starts_with_zero_up_projection_and_still_learns_it():
    static = nn.Conv2d(16, 32, 3, padding=1, bias=True)
    conv = convert_convs(nn.Sequential(nn.Identity(), static), "a2d2c_plus", convert="all", inflate=True)[1]
    assert isinstance(conv, A2D2CPlusConv2d)
    assert torch.equal(conv.weight, static.weight) and torch.equal(conv.bias, static.bias)
    assert not conv.up_weight.any() and conv.down_weight.abs().sum() > 0
    conv(torch.randn(2, 16, 8, 8)).square().sum().backward()
    assert conv.up_weight.grad.abs().sum() > 0  # U leaves zero at the first step


def test_inflate_copies_bias_into_every_kernel():
    static = nn.Conv2d(8, 8, 3, padding=1, bias=True)
    conv = convert_convs(nn.Sequential(nn.Identity(), static), "dynamic", convert="all", inflate=True)[1]
    assert torch.equal(conv.weight, static.weight.expand_as(conv.weight))
    assert torch.equal(conv.bias, static.bias.expand_as(conv.bias))


TORCHVISION = {"resnet18": lambda n: resnet18(num_classes=n),
               "mobilenetv2_x0_5": lambda n: mobilenet_v2(width_mult=0.5, num_classes=n)}


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("as_checkpoint", [False, True])
def test_init_weights_start_the_dynamic_classifier_at_the_static_model(tmp_path, name, as_checkpoint, image):
    torch.manual_seed(0)
    static = randomise_batch_norm(TORCHVISION[name](10)).eval()
    path = tmp_path / "static.pth"
    state = static.state_dict()
    torch.save({"model": state, "epoch": 3} if as_checkpoint else state, path)
    model = build_classifier(name, "dynamic", num_classes=10, init_weights=str(path)).eval()
    plain = build_classifier(name, "dynamic", num_classes=10).eval()
    with torch.no_grad():
        expected = static(image)
        assert close(model(image), expected)
        assert not close(plain(image), expected)


def test_init_weights_keep_their_own_head_for_another_number_of_classes(tmp_path):
    static = randomise_batch_norm(resnet18(num_classes=1000))
    torch.save(static.state_dict(), tmp_path / "r18.pth")
    model = build_classifier("resnet18", "dynamic", num_classes=7, init_weights=str(tmp_path / "r18.pth"))
    assert model.fc.out_features == 7
    assert torch.equal(model.layer1[0].bn1.running_var, static.layer1[0].bn1.running_var)
    assert torch.equal(model.layer1[0].conv1.weight[2], static.layer1[0].conv1.weight)


def one_line_config_error(match, *args, **kwargs):
    with pytest.raises(ConfigError, match=match) as error:
        build_classifier(*args, **kwargs)
    assert "\n" not in str(error.value)


def test_init_weights_errors_are_one_line(tmp_path):
    one_line_config_error("cannot read init weights", "resnet18", "dynamic", init_weights=str(tmp_path / "no.pth"))
    (tmp_path / "junk.pth").write_text("not a tensor file")
    one_line_config_error("cannot read init weights", "resnet18", "dynamic", init_weights=str(tmp_path / "junk.pth"))
    torch.save(mobilenet_v2().state_dict(), tmp_path / "mbv2.pth")
    one_line_config_error("do not fit a static resnet18", "resnet18", "dynamic",
                          init_weights=str(tmp_path / "mbv2.pth"))
    # a dynamic model's weights are not a static model's
    torch.save(build_classifier("resnet10", "dynamic").state_dict(), tmp_path / "dy.pth")
    one_line_config_error("do not fit a static resnet10", "resnet10", "dynamic", init_weights=str(tmp_path / "dy.pth"))


def test_init_weights_from_the_config(tmp_path, image):
    from hydra.utils import instantiate

    from helpers.train_utils import compose_config

    static = randomise_batch_norm(resnet18(num_classes=10)).eval()
    torch.save(static.state_dict(), tmp_path / "r18.pth")
    cfg = compose_config("backbone=resnet18", "conv=a2d2c", "dataset=synthetic", "dataset.num_classes=10",
                         f"backbone.init_weights={tmp_path / 'r18.pth'}")
    model = instantiate(cfg.task).build_model().eval()
    with torch.no_grad():
        assert close(model(image), static(image))


def test_detector_backbone_from_init_weights(tmp_path):
    static = randomise_batch_norm(resnet18())
    torch.save(static.state_dict(), tmp_path / "r18.pth")
    model = build_detector("fasterrcnn", "resnet18", "dynamic", num_classes=3, init_weights=str(tmp_path / "r18.pth"))
    body = model.backbone.body
    assert torch.equal(body.layer2[0].conv1.weight[0], static.layer2[0].conv1.weight)
    assert not body.layer1[0].conv1.weight.requires_grad  # pretrained: the top 3 stages train
    with pytest.raises(ValueError, match="not both"):
        build_detector("fasterrcnn", "resnet18", "dynamic", backbone_weights=str(tmp_path / "r18.pth"),
                       init_weights=str(tmp_path / "r18.pth"))
