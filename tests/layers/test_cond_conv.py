"""CondConv (conv=condconv) against its formula, r = sigmoid(FC(GAP(x))), on every computation path,
and its place in the rest of the project: no τ, inflation, complexity, a 2-step training run."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from a2d2c.checkpoint.resume_check import config_changes
from a2d2c.engine.temperature_schedule import plan_temperature
from a2d2c.engine.trainer import Trainer
from a2d2c.layers import CondConv2d, create_conv2d, has_temperature, set_temperature
from a2d2c.models import build_classifier, convert_convs
from a2d2c.models.complexity import count_macs
from helpers.reference_convs import reference
from helpers.train_utils import QUIET, TINY, compose_config

PATHS = ("auto", "tune", "aggregate", "unfold", "triton", "responses", "reference")


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def build(groups=1, bias=True, **opts):
    return create_conv2d("condconv", 4, 6, 3, groups=groups, bias=bias, **opts).double()


@pytest.mark.parametrize("path", PATHS)  # triton: on CPU it computes as aggregate
@pytest.mark.parametrize("groups,bias,batch,stride", [(1, True, 3, 1), (2, False, 3, 2), (2, True, 1, 1),
                                                       (1, False, 2, 2)])
def test_matches_naive_reference_on_every_path(path, groups, bias, batch, stride):
    torch.manual_seed(0)
    m = create_conv2d("condconv", 4, 6, 3, stride=stride, groups=groups, bias=bias, path=path).double()
    with torch.no_grad():  # non-zero routing bias, so the reference's bias term is checked too
        m.routing.bias.normal_()
    x = torch.randn(batch, 4, 7, 6, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(m(x), reference(m, x)) < 1e-10


@pytest.mark.parametrize("path,groups", itertools.product(("aggregate", "unfold", "responses"), (1, 2)))
def test_gradcheck(path, groups):
    m = build(groups, num_kernels=2, path=path)
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def fn(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("groups,bias", itertools.product((1, 2), (True, False)))
def test_one_expert_is_its_gate_times_a_static_conv(groups, bias):
    m = build(groups, bias, num_kernels=1)
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    r = torch.sigmoid(x.mean((2, 3)) @ m.routing.weight.T + m.routing.bias).view(3, 1, 1, 1)
    expected = r * F.conv2d(x, m.weight[0], None, m.stride, m.padding, m.dilation, m.groups)
    if bias:
        expected = expected + r * m.bias[0].view(1, -1, 1, 1)
    with torch.no_grad():
        assert rel_err(m(x), expected) < 1e-10


def test_routing_is_one_linear_layer_of_independent_sigmoids():
    m = create_conv2d("condconv", 8, 12, 3, num_kernels=3)
    assert isinstance(m, CondConv2d) and not hasattr(m, "kernel_attention")
    assert isinstance(m.routing, torch.nn.Linear) and m.routing.weight.shape == (3, 8)
    assert m.weight.shape == (3, 12, 8, 3, 3) and m.bias is None
    assert torch.equal(m.routing.bias, torch.zeros(3))  # every gate starts near 1/2
    r = m.attention(torch.randn(5, 8, 4, 4))
    assert r.shape == (5, 3) and ((r > 0) & (r < 1)).all()
    assert not torch.allclose(r.sum(1), torch.ones(5))  # no softmax
    assert create_conv2d("condconv", 4, 4, 3).num_kernels == 4
    with pytest.raises(ValueError, match="option 'temperature' is not valid for conv type 'condconv'"):
        create_conv2d("condconv", 4, 4, 3, temperature=2.0)


def test_batch_one_trains():
    m = create_conv2d("condconv", 4, 4, 3, bias=True).train()
    m(torch.randn(1, 4, 5, 5)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_has_no_temperature_and_the_schedule_passes_it_by():
    model = build_classifier("resnet10", "condconv", num_classes=3, stem="cifar")
    layers = [m for m in model.modules() if isinstance(m, CondConv2d)]
    assert layers and all(m.temperature is None and not has_temperature(m) for m in layers)
    assert not any(k.endswith(".temperature") for k in model.state_dict())
    assert "temperature" not in repr(layers[0])
    assert set_temperature(model, 30.0) == 0
    # Even with a tau_schedule node (a preset's, say), a model without τ has no schedule.
    cfg = compose_config("conv=dynamic")
    assert cfg.conv.tau_schedule is not None
    assert plan_temperature(cfg, model) == (None, None)
    assert compose_config("conv=condconv").conv.tau_schedule is None
    # ... and a resume does not call a tau_schedule it never reads a change.
    saved, now = ({"conv": {"type": "condconv", "tau_schedule": t}} for t in (None, {"start": 30.0}))
    assert config_changes(saved, now) == {}
    assert config_changes({"conv": {"type": "dynamic", "tau_schedule": None}}, {"conv": now["conv"]}) != {}


def test_inflated_from_static_computes_the_static_function():
    torch.manual_seed(0)
    static = build_classifier("resnet10", "static", num_classes=3, stem="cifar").eval()
    model = build_classifier("resnet10", "static", num_classes=3, stem="cifar")
    model.load_state_dict(static.state_dict())
    convert_convs(model, "condconv", inflate=True, num_kernels=3)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert rel_err(model.eval()(x), static(x)) < 1e-5


def test_complexity_counts_routing_aggregation_and_one_conv():
    # Same MAdds as DyConv's canonical form, with the routing C*K in place of DyConv's two FCs.
    cond = create_conv2d("condconv", 16, 32, 3, path="responses")
    dyn = create_conv2d("dynamic", 16, 32, 3, path="responses")
    fc1, fc2 = dyn.kernel_attention.fc1, dyn.kernel_attention.fc2
    dyn_attention = fc1.in_features * fc1.out_features + fc2.in_features * fc2.out_features
    assert count_macs(cond, (16, 8, 8)) - count_macs(dyn, (16, 8, 8)) == 16 * 4 - dyn_attention
    assert cond.path == "responses"  # the caller's layer keeps its path


def test_trains_two_steps_through_the_config(tmp_path):
    cfg = compose_config("conv=condconv", *QUIET, *TINY, "dataset.train_size=16", "trainer.epochs=1")
    assert cfg.conv.type == "condconv" and cfg.conv.tau_schedule is None
    trainer = Trainer(cfg, tmp_path)
    assert any(isinstance(m, CondConv2d) for m in trainer.model.modules())
    results = trainer.fit()
    assert results["final"]["step"] == 2 and trainer.tau is None
    assert torch.isfinite(torch.tensor(results["final"]["train/loss"]))
    assert "temperature" not in results["final"]
