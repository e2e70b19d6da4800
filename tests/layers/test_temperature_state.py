"""The softmax temperature tau is model state: saved, restored, and set in place."""
import pytest
import torch
from torch._dynamo.testing import CompileCounter

from a2d2c.layers import MixtureConv2d, create_conv2d, set_temperature
from a2d2c.models import build_classifier

DYNAMIC_TYPES = ["dynamic", "a2d2c", "a2d2c_plus"]


def tiny(conv_type, seed):
    torch.manual_seed(seed)
    return build_classifier("resnet10", conv_type, num_classes=10, stem="cifar").eval()


def taus(model):
    return [float(m.temperature) for m in model.modules() if isinstance(m, MixtureConv2d)]


@pytest.mark.parametrize("conv_type", DYNAMIC_TYPES)
def test_a_model_saved_mid_annealing_reloads_at_its_tau(conv_type):
    saved = tiny(conv_type, seed=0)
    set_temperature(saved, 7.0)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = saved(x)
    state = saved.state_dict()
    assert state["layer1.0.conv1.temperature"].shape == () and state["layer1.0.conv1.temperature"].item() == 7.0

    fresh = tiny(conv_type, seed=1)  # built at tau = 1, other weights
    fresh.load_state_dict(state)
    assert taus(fresh) == [7.0] * len(taus(saved))
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)


def test_a_state_dict_without_tau_loads_and_keeps_the_models_tau():
    old = {k: v for k, v in tiny("dynamic", seed=0).state_dict().items() if not k.endswith(".temperature")}
    model = tiny("dynamic", seed=1)
    set_temperature(model, 3.0)
    result = model.load_state_dict(old)  # strict
    assert not result.missing_keys and not result.unexpected_keys
    assert taus(model) and set(taus(model)) == {3.0}
    assert torch.equal(model.layer1[0].conv1.weight, old["layer1.0.conv1.weight"])

    # Only tau may be missing: every other key stays strict.
    del old["layer1.0.conv1.weight"]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"layer1.0.conv1.weight\""):
        model.load_state_dict(old)


def test_set_temperature_changes_the_buffer_in_place_without_recompiling():
    torch.manual_seed(0)
    conv = create_conv2d("dynamic", 8, 8, 3).eval()
    buffer = conv.temperature
    counter = CompileCounter()
    compiled = torch.compile(conv, backend=counter, fullgraph=True)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        at_one = compiled(x)
        assert set_temperature(conv, 7.0) == 1
        at_seven = compiled(x)
        assert torch.allclose(at_seven, conv(x)) and not torch.allclose(at_seven, at_one)
    assert conv.temperature is buffer and buffer.item() == 7.0
    assert conv.state_dict()["temperature"].item() == 7.0
    assert counter.frame_count == 1  # tau is a tensor input of the graph, not a guarded constant
