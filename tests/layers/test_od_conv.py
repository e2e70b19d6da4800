"""ODConv (conv=odconv) against its formula on every computation path, its limits (K = 1, huge τ),
its attention's batch-of-one behaviour, and its place in the project: inflation, the paper's
parameter counts, a 2-step training run with τ annealing."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from a2d2c.engine.trainer import Trainer
from a2d2c.layers import ODConv2d, create_conv2d
from a2d2c.layers.functional import aggregate_kernels, aggregate_kernels_backward, tap_scaled_responses
from a2d2c.models import build_classifier, convert_convs
from a2d2c.models.complexity import count_complexity
from helpers.reference_convs import reference
from helpers.train_utils import QUIET, TINY, compose_config

PATHS = ("auto", "tune", "aggregate", "unfold", "triton", "responses", "reference")
# (in, out, kernel, groups): dense 3x3, grouped 3x3, depthwise 3x3 (no filter head), 1x1 (no spatial head)
LAYOUTS = [(4, 6, 3, 1), (4, 6, 3, 2), (6, 6, 3, 6), (4, 6, 1, 1)]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def build(cin=4, cout=6, kernel_size=3, groups=1, bias=True, **opts):
    torch.manual_seed(0)
    m = create_conv2d("odconv", cin, cout, kernel_size, groups=groups, bias=bias, **opts).double()
    with torch.no_grad():  # heads' biases start at zero: random ones check the reference's bias terms
        for fc in (m.omni_attention.channel_fc, m.omni_attention.filter_fc, m.omni_attention.spatial_fc,
                   m.omni_attention.kernel_fc):
            if fc is not None:
                fc.bias.normal_()
        if m.bias is not None:
            m.bias.normal_()
        m.omni_attention.bn.running_mean.normal_()
    return m


@pytest.mark.parametrize("path", PATHS)  # triton: on CPU it computes as aggregate
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("num_kernels,bias,batch,stride,training", [
    (4, True, 3, 1, True), (4, False, 3, 2, False), (1, True, 3, 1, True), (4, True, 1, 1, True),
    (1, False, 2, 2, False)])
def test_matches_naive_reference_on_every_path(path, layout, num_kernels, bias, batch, stride, training):
    cin, cout, k, groups = layout
    m = build(cin, cout, k, groups, bias, stride=stride, num_kernels=num_kernels, temperature=0.7, path=path)
    m.train(training)
    x = torch.randn(batch, cin, 7, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = reference(m, x)  # before the forward: in training the forward moves BN's running statistics
        assert rel_err(m(x), expected) < 1e-10


@pytest.mark.parametrize("path", ("aggregate", "unfold", "responses", "reference"))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck(path, layout):
    cin, cout, k, groups = layout
    m = build(cin, cout, k, groups, num_kernels=2, path=path).eval()  # eval: BN is a function of one sample
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(2, cin, 4, 4, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def fn(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, fast_mode=True)


def test_gradients_flow_through_the_batch_statistics_in_training():
    m = build(num_kernels=2, path="aggregate").train()
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    buffers = {n: b.clone() for n, b in m.named_buffers()}

    def fn(x, *ps):  # fresh buffers each call: the check runs many forwards
        return torch.func.functional_call(m, {**dict(zip(names, ps)), **{n: b.clone() for n, b in buffers.items()}},
                                          (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("shape", [(2, 4, 3, 3), (2, 4, 1, 1), (3, 1, 3, 2)])
@pytest.mark.parametrize("with_taps", [True, False])
def test_aggregation_with_tap_weights_and_its_backward(shape, with_taps):
    b, k, kh, kw = shape
    attn = torch.randn(b, k, dtype=torch.float64, requires_grad=True)
    taps = torch.randn(b, kh, kw, dtype=torch.float64, requires_grad=True) if with_taps else None
    weight = torch.randn(k, 5, 3, kh, kw, dtype=torch.float64, requires_grad=True)
    kernels = aggregate_kernels(attn, weight, taps)
    coefficients = attn[:, :, None, None] * (taps[:, None] if with_taps else 1)  # B x K x kh x kw
    assert torch.allclose(kernels, torch.einsum("bkrs,kocrs->bocrs", coefficients, weight))
    grad = torch.randn_like(kernels)
    leaves = (attn, weight) + ((taps,) if with_taps else ())
    expected = torch.autograd.grad(kernels, leaves, grad)
    got = aggregate_kernels_backward(grad, attn.detach(), weight.detach(), None if taps is None else taps.detach())
    assert all(torch.allclose(g, e) for g, e in zip(got, expected))
    assert (got[2] is None) == (not with_taps)


@pytest.mark.parametrize("groups,stride", [(1, 1), (2, 2), (6, 1)])
def test_tap_scaled_responses_are_the_scaled_kernels_responses(groups, stride):
    x = torch.randn(2, 6, 7, 6, dtype=torch.float64)
    weight = torch.randn(3, 6, 6 // groups, 3, 3, dtype=torch.float64)
    taps = torch.rand(2, 3, 3, dtype=torch.float64)
    got = tap_scaled_responses(x, taps, weight, (stride, stride), (1, 1), (1, 1), groups)
    for b, k in itertools.product(range(2), range(3)):
        expected = F.conv2d(x[b:b + 1], weight[k] * taps[b], None, stride, 1, 1, groups)
        assert rel_err(got[b, k], expected[0]) < 1e-12


@pytest.mark.parametrize("layout", LAYOUTS)
def test_huge_temperature_gives_halved_heads_and_the_mean_kernel(layout):
    cin, cout, k, groups = layout
    m = build(cin, cout, k, groups, temperature=1e12).eval()
    heads = sum(fc is not None for fc in m.omni_attention.heads())
    x = torch.randn(3, cin, 7, 7, dtype=torch.float64)
    # every sigmoid -> 1/2, the softmax -> 1/K: each head present halves the output (the bias only by the filter's)
    scale = 0.5 ** heads
    bias_scale = 0.5 if m.omni_attention.filter_fc is not None else 1.0
    expected = scale * F.conv2d(x, m.weight.mean(0), None, m.stride, m.padding, m.dilation, groups) \
        + bias_scale * m.bias.mean(0).view(1, -1, 1, 1)
    with torch.no_grad():
        assert rel_err(m(x), expected) < 1e-9


def test_single_kernel_has_no_kernel_head_and_a_one_by_one_is_one_plain_conv():
    m = build(4, 6, 1, num_kernels=1, bias=False).eval()
    att = m.omni_attention
    assert att.kernel_fc is None and att.spatial_fc is None and att.filter_fc is not None
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        heads = m.heads(x)
        assert heads.kernel is None and heads.spatial is None
        expected = heads.filter[:, :, None, None] * F.conv2d(x * heads.channel[:, :, None, None], m.weight[0])
        assert rel_err(m(x), expected) < 1e-12
        assert torch.equal(m.attention(x), torch.ones(3, 1, dtype=torch.float64))


def test_heads_the_paper_skips():
    depthwise = create_conv2d("odconv", 32, 32, 3, groups=32, num_kernels=4)
    assert depthwise.omni_attention.filter_fc is None  # filter and channel are one axis there
    pointwise = create_conv2d("odconv", 32, 64, 1)
    assert pointwise.omni_attention.spatial_fc is None
    dense = create_conv2d("odconv", 512, 64, 3)
    att = dense.omni_attention
    assert att.fc.out_features == 32 and create_conv2d("odconv", 64, 64, 3).omni_attention.fc.out_features == 16
    assert att.fc.bias is None and isinstance(att.bn, torch.nn.BatchNorm1d)
    assert [fc.out_features for fc in (att.channel_fc, att.filter_fc, att.spatial_fc, att.kernel_fc)] == [512, 64, 9, 4]
    assert all(torch.equal(fc.bias, torch.zeros_like(fc.bias)) for fc in att.heads() + [att.kernel_fc])
    assert dense.temperature == 1.0
    heads = dense.heads(torch.randn(2, 512, 5, 5))
    assert heads.channel.shape == (2, 512) and heads.filter.shape == (2, 64)
    assert heads.spatial.shape == (2, 3, 3) and heads.kernel.shape == (2, 4)
    assert torch.allclose(heads.kernel.sum(1), torch.ones(2))


def test_a_batch_of_one_trains_with_the_running_statistics_and_leaves_them():
    m = build().train()
    bn = m.omni_attention.bn
    running = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    out = m(x)
    assert all(torch.equal(a, b) for a, b in zip(running, (bn.running_mean, bn.running_var, bn.num_batches_tracked)))
    with torch.no_grad():
        assert rel_err(out, m.eval()(x)) < 1e-12  # the same normalisation as in eval mode
    m.train()
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    m(torch.randn(2, 4, 5, 5, dtype=torch.float64))  # a larger batch: BN's own statistics, and updates them
    assert not torch.equal(running[0], bn.running_mean)


def test_tuning_does_not_move_the_attentions_batch_norm():
    m = build(path="tune").train()
    bn = m.omni_attention.bn
    m(torch.randn(3, 4, 6, 6, dtype=torch.float64))
    assert int(bn.num_batches_tracked) == 1  # the timed runs used constant attentions


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("num_kernels,bias", [(4, True), (1, False)])
def test_inflated_from_static_computes_the_static_function(layout, num_kernels, bias):
    cin, cout, k, groups = layout
    static = torch.nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=bias)
    model = torch.nn.Sequential(torch.nn.Conv2d(cin, cin, 1), static)  # the first conv is the stem
    reference_model = torch.nn.Sequential(*[torch.nn.Conv2d(cin, cin, 1), torch.nn.Conv2d(
        cin, cout, k, padding=k // 2, groups=groups, bias=bias)])
    reference_model.load_state_dict(model.state_dict())
    convert_convs(model, "odconv", inflate=True, num_kernels=num_kernels)
    assert isinstance(model[1], ODConv2d)
    x = torch.randn(3, cin, 8, 8)
    with torch.no_grad():
        assert rel_err(model.train()(x), reference_model(x)) < 1e-5


# ODConv's README: ResNet-18 11.94M (1x) / 44.90M (4x), MobileNetV2 x1.0 4.94M / 11.51M, with its layout: the
# ResNet's downsample shortcuts static; every MobileNetV2 conv but the stem dynamic (features.18 included).
@pytest.mark.parametrize("backbone,layout,num_kernels,params", [
    ("resnet18", {"exclude": ["layer*.0.downsample"]}, 1, 11.94e6),
    ("resnet18", {"exclude": ["layer*.0.downsample"]}, 4, 44.90e6),
    ("mobilenetv2_x1_0", {"keep_static": []}, 1, 4.94e6),
    ("mobilenetv2_x1_0", {"keep_static": []}, 4, 11.51e6)])
def test_parameters_equal_the_papers_with_its_layout(backbone, layout, num_kernels, params):
    with torch.device("meta"):
        model = build_classifier(backbone, "odconv", num_kernels=num_kernels, **layout)
    assert round(count_complexity(model)["params"] / 1e4) == round(params / 1e4)


def test_trains_two_steps_through_the_config_with_tau_annealing(tmp_path):
    cfg = compose_config("conv=odconv", *QUIET, *TINY, "dataset.train_size=16", "trainer.epochs=1")
    assert cfg.conv.type == "odconv" and cfg.conv.tau_schedule.start == 30.0
    trainer = Trainer(cfg, tmp_path)
    layers = [m for m in trainer.model.modules() if isinstance(m, ODConv2d)]
    assert layers and all(float(m.temperature) == 30.0 for m in layers)
    results = trainer.fit()
    assert results["final"]["step"] == 2
    assert torch.isfinite(torch.tensor(results["final"]["train/loss"]))
    assert all(float(m.temperature) < 30.0 for m in layers)


def _one_sample_per_process(rank, world, init_file, x, state, out_dir):
    import torch.distributed as dist
    from a2d2c.distributed.process_group import convert_sync_batchnorm
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        m = convert_sync_batchnorm(create_conv2d("odconv", 4, 6, 3, bias=True).double(), torch.device("cpu"))
        m.load_state_dict(state)
        out = m.train()(x[rank:rank + 1])
        torch.save({"out": out.detach(), "running_mean": m.omni_attention.bn.running_mean}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_a_synced_batch_norm_normalises_one_sample_per_process_over_the_global_batch(tmp_path):
    # Two gloo processes with one sample each, the attention's BN converted as trainer.sync_bn does:
    # the global batch of two, as one process with both samples computes it.
    m = build()
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    torch.multiprocessing.spawn(_one_sample_per_process, args=(2, tmp_path / "init", x, state, tmp_path), nprocs=2)
    expected = m.train()(x).detach()
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    assert rel_err(torch.cat([r["out"] for r in results]), expected) < 1e-10
    assert all(torch.allclose(r["running_mean"], m.omni_attention.bn.running_mean) for r in results)
