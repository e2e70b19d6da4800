"""Each conv type against the independent float64 references in reference_convs.py."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from a2d2c.layers import CONV_TYPES, conv_options, create_conv2d, set_temperature
from helpers.reference_convs import ref_centre_tap_kernel, ref_low_rank_kernel, reference

DYNAMIC_TYPES = [t for t in CONV_TYPES if t != "static"]
GROUPINGS = {"dense": (4, 6, 1), "grouped": (4, 6, 2), "depthwise": (6, 6, 6)}


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def build(conv_type, grouping="dense", kernel_size=3, stride=1, dilation=1, bias=True, **opts):
    cin, cout, groups = GROUPINGS[grouping]
    return create_conv2d(conv_type, cin, cout, kernel_size, stride=stride, dilation=dilation,
                         groups=groups, bias=bias, **opts)


CASES = list(itertools.product(GROUPINGS, (1, 3), (1, 2), (1, 2), (True, False), (1, 5)))


@pytest.mark.parametrize("conv_type", DYNAMIC_TYPES)
@pytest.mark.parametrize("grouping,kernel_size,stride,dilation,bias,batch", CASES)
def test_matches_naive_reference(conv_type, grouping, kernel_size, stride, dilation, bias, batch):
    tau = {"temperature": 0.7} if "temperature" in conv_options(conv_type) else {}  # condconv has no τ
    m = build(conv_type, grouping, kernel_size, stride, dilation, bias, **tau).double()
    x = torch.randn(batch, m.in_channels, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(m(x), reference(m, x)) < 1e-10


@pytest.mark.parametrize("path", ["aggregate", "unfold", "triton", "responses", "reference", "tune"])
@pytest.mark.parametrize("grouping,stride,batch", itertools.product(GROUPINGS, (1, 2), (1, 3)))
def test_dynamic_paths_match_reference(path, grouping, stride, batch):
    m = build("dynamic", grouping, stride=stride, path=path).double()
    x = torch.randn(batch, m.in_channels, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(m(x), reference(m, x)) < 1e-10


@pytest.mark.parametrize("conv_type,opts", [(t, {}) for t in DYNAMIC_TYPES] +
                         [("dynamic", {"path": "aggregate"}), ("dynamic", {"path": "unfold"}),
                          ("a2d2c", {"recompute_responses": True})])
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_gradcheck(conv_type, opts, grouping):
    m = build(conv_type, grouping, num_kernels=2, **opts).double()
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(2, m.in_channels, 4, 4, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def fn(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))

    # fast_mode checks random projections of the Jacobian: the same test, far fewer forwards
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("conv_type", DYNAMIC_TYPES)
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_every_parameter_gets_a_gradient(conv_type, grouping):
    m = build(conv_type, grouping)
    x = torch.randn(3, m.in_channels, 6, 6)
    (m(x) * torch.randn_like(m(x))).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("conv_type", ["dynamic", "a2d2c"])
def test_huge_temperature_gives_the_mean_kernel(conv_type):
    m = build(conv_type, temperature=1e12).double()
    x = torch.randn(3, m.in_channels, 7, 7, dtype=torch.float64)
    expected = F.conv2d(x, m.weight.mean(0), m.bias.mean(0), m.stride, m.padding, m.dilation)
    with torch.no_grad():
        assert rel_err(m(x), expected) < 1e-9


# condconv's and odconv's single kernel is scaled by sigmoid gates (test_cond_conv.py and test_od_conv.py
# check those limits)
@pytest.mark.parametrize("conv_type", [t for t in DYNAMIC_TYPES if t not in ("condconv", "odconv")])
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_single_kernel_is_a_static_conv(conv_type, grouping):
    m = build(conv_type, grouping, stride=2, num_kernels=1).double()
    x = torch.randn(2, m.in_channels, 8, 8, dtype=torch.float64)
    if hasattr(m, "down_weight"):
        delta = ref_low_rank_kernel(m.up_weight, m.down_weight[0], m.groups)
        if grouping == "depthwise":
            delta = ref_centre_tap_kernel(delta, m.kernel_size)
        kernel, bias = m.weight + delta, m.bias
    else:
        kernel, bias = m.weight[0], m.bias[0]
    expected = F.conv2d(x, kernel, bias, m.stride, m.padding, m.dilation, m.groups)
    with torch.no_grad():
        assert rel_err(m(x), expected) < 1e-10


@pytest.mark.parametrize("conv_type", CONV_TYPES)
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_channels_last_matches_contiguous(conv_type, grouping):
    m = build(conv_type, grouping)
    x = torch.randn(4, m.in_channels, 10, 10)
    with torch.no_grad():
        expected = m(x)
        out = m.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert rel_err(out, expected) < 1e-5
    assert torch.equal(m.weight, m.weight.contiguous())  # values and shape untouched


@pytest.mark.parametrize("conv_type", CONV_TYPES)
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_bf16_autocast_within_bf16_tolerance(conv_type, grouping):
    m = build(conv_type, grouping)
    x = torch.randn(4, m.in_channels, 10, 10).to(memory_format=torch.channels_last)
    expected = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), expected.detach()) < 3e-2
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("conv_type", DYNAMIC_TYPES)
def test_parameter_shapes_and_attention_shapes(conv_type):
    m = create_conv2d(conv_type, 8, 12, 3, stride=2, groups=2, bias=True, num_kernels=3)
    x = torch.randn(2, 8, 9, 9)
    if conv_type == "a2d2c_plus":
        assert m.weight.shape == (12, 4, 3, 3) and m.bias.shape == (12,)
        assert m.expert_kernels().shape == (3, 12, 4, 3, 3)
        assert m.down_weight.shape == (3, m.rank, 4, 3, 3) and m.rank % 2 == 0
    else:
        assert m.weight.shape == (3, 12, 4, 3, 3) and m.bias.shape == (3, 12)
    attn = m.attention(x)
    assert attn.shape == ((2, 3) if conv_type in ("dynamic", "condconv", "odconv") else (2, 3, 5, 5))
    if conv_type == "condconv":  # independent sigmoid gates
        assert ((attn > 0) & (attn < 1)).all()
    else:
        assert torch.allclose(attn.sum(1), torch.ones(()))


def test_a2d2c_plus_experts_equal_their_full_kernels():
    # y = W_0 x + U sum_k a_k V_k x  ==  A2D2C over the kernels W_0 + U V_k
    m = create_conv2d("a2d2c_plus", 8, 32, 3, groups=2, bias=False).double()
    for k in range(m.num_kernels):
        assert torch.allclose(m.expert_kernels()[k],
                              m.weight + ref_low_rank_kernel(m.up_weight, m.down_weight[k], 2))


def test_dynamic_batch_one_aggregates_the_kernel_once():
    for path in ("auto", "tune", "aggregate"):
        assert create_conv2d("dynamic", 16, 16, 3, path=path).select_path(torch.randn(1, 16, 7, 7)) == "aggregate"
    assert create_conv2d("dynamic", 16, 16, 3).select_path(torch.randn(8, 16, 7, 7)) == "responses"


def test_tuned_path_is_measured_once_and_cached():
    from a2d2c.layers.kernels.path_tuning import TUNABLE_PATHS, TUNER
    m = create_conv2d("dynamic", 16, 16, 3, path="tune")
    x = torch.randn(4, 16, 9, 9)
    chosen = m.select_path(x)
    assert chosen in TUNABLE_PATHS
    assert TUNER.choices[m._tuning_key(x)] == chosen
    assert m.select_path(x) == chosen


@pytest.mark.parametrize("frozen", ["weight", "layer"])
@pytest.mark.parametrize("training", [True, False])
def test_tune_works_with_frozen_kernels(frozen, training):
    # Frozen stages (detection) or requires_grad_(False): the tuner times the backward that
    # really runs, without the kernel gradients, instead of failing every candidate.
    from a2d2c.layers.kernels.path_tuning import TUNER
    torch.manual_seed(0)
    m = build("dynamic", "dense", path="tune").double().train(training)
    (m.weight if frozen == "weight" else m).requires_grad_(False)
    x = torch.randn(3, m.in_channels, 9, 7, dtype=torch.float64, requires_grad=True)
    TUNER.choices.pop(m._tuning_key(x), None)  # measure here, whatever ran before
    out = m(x)
    assert m._tuning_key(x) in TUNER.choices
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out))
    m.path = "aggregate"
    x_ref = x.detach().requires_grad_()
    ref = m(x_ref)
    ref.backward(torch.linspace(-1, 1, ref.numel(), dtype=torch.float64).view_as(ref))
    assert rel_err(out, ref) < 1e-10 and rel_err(x.grad, x_ref.grad) < 1e-10
    assert m.weight.grad is None


def test_a_path_that_fails_while_tuning_is_skipped_with_a_warning(caplog):
    from a2d2c.layers.kernels.path_tuning import PathTuner

    def run(path):
        if path == "unfold":
            raise RuntimeError("CUDA out of memory. Tried to allocate 9.00 GiB")

    with caplog.at_level("WARNING"):
        chosen = PathTuner(repeats=1).choose("key", run, torch.device("cpu"), ("unfold", "responses"))
    assert chosen == "responses"
    assert "path 'unfold' failed while tuning key, not a candidate there: CUDA out of memory" in caplog.text
    with pytest.raises(RuntimeError, match="no computation path ran for key; tried unfold"):
        PathTuner().choose("key", run, torch.device("cpu"), ("unfold",))


def test_options_have_documented_defaults():
    d = create_conv2d("dynamic", 16, 32, 3)
    assert d.num_kernels == 4 and d.temperature == 1.0
    assert d.kernel_attention.fc1.out_features == 4  # 16 // 4
    assert create_conv2d("dynamic", 8, 8, 3).kernel_attention.fc1.out_features == 4  # >= 4 units
    a = create_conv2d("a2d2c", 16, 32, 3)
    assert a.local_attention.conv.kernel_size == (3, 3) and a.kernel_attention is not None
    assert create_conv2d("a2d2c", 16, 32, 3, global_context=False).kernel_attention is None
    p = create_conv2d("a2d2c_plus", 128, 128, 3)
    assert p.rank == 8  # min(O, C kh kw) // 16
    assert p.kernel_attention.fc1.out_features == 8  # reduction 16
    assert p.local_attention.spatial.kernel_size == (3, 3)
    assert create_conv2d("a2d2c_plus", 128, 128, 3, rank_divisor=8).rank == 16
    assert create_conv2d("a2d2c_plus", 8, 8, 3).rank == 1  # at least min_rank = 1


@pytest.mark.parametrize("cin,cout,kernel_size,groups,rank", [
    (32, 192, 1, 1, 2),      # 1x1 expansion: bounded by C, not O (U costs O r)
    (192, 32, 1, 1, 2),      # 1x1 projection: bounded by O
    (64, 256, 3, 1, 16),     # 3x3: C kh kw > O, so O // 16
    (16, 24, 1, 1, 1),       # min_rank
    (64, 64, 3, 4, 4),       # a multiple of groups
    (96, 96, 3, 96, 96),     # depthwise: one rank per channel (1x1 experts)
])
def test_rank_rule(cin, cout, kernel_size, groups, rank):
    assert create_conv2d("a2d2c_plus", cin, cout, kernel_size, groups=groups).rank == rank


@pytest.mark.parametrize("cin,cout,kernel_size", [(32, 192, 1), (192, 32, 1), (64, 256, 3),
                                                   (256, 64, 3), (24, 144, 1)])
def test_rank_rule_bounds_the_cost_of_v_and_u(cin, cout, kernel_size):
    # per output position, against the static conv: V (K experts) <= K / 16, U <= 1 / 16
    m = create_conv2d("a2d2c_plus", cin, cout, kernel_size)
    static = cout * cin * kernel_size ** 2
    assert m.down_weight.numel() <= m.num_kernels * static / 16
    assert m.up_weight.numel() <= static / 16

def test_padding_none_is_same_style():
    m = create_conv2d("a2d2c", 4, 4, 5, dilation=2)
    assert m.padding == (4, 4)
    assert m(torch.randn(1, 4, 11, 11)).shape[-2:] == (11, 11)
    assert create_conv2d("static", 4, 4, 3).padding == (1, 1)


def test_depthwise_a2d2c_plus_has_one_by_one_experts():
    m = create_conv2d("a2d2c_plus", 8, 8, 3, groups=8)
    assert type(m).__name__ == "A2D2CPlusConv2d" and m.depthwise
    assert m.down_weight.shape == (4, 8, 1, 1, 1) and m.up_weight.shape == (8, 1, 1, 1)
    # the candidate kernels differ from W_0 only at the centre tap
    delta = (m.expert_kernels() - m.weight).detach()
    assert delta[..., 1, 1].abs().min() > 0
    delta[..., 1, 1] = 0
    assert delta.abs().max() == 0


@pytest.mark.parametrize("kernel_size,stride,dilation,padding", [
    (3, 2, 1, 0), (3, 1, 2, 3), (2, 1, 1, 0), (4, 2, 1, 1), (5, 2, 2, None), ((3, 5), 1, 1, (1, 0))])
def test_depthwise_a2d2c_plus_centre_tap_any_geometry(kernel_size, stride, dilation, padding):
    # the 1x1 experts read the input the kernel's centre tap reads, whatever the padding
    m = create_conv2d("a2d2c_plus", 6, 6, kernel_size, stride=stride, dilation=dilation,
                      padding=padding, groups=6, bias=True).double()
    x = torch.randn(2, 6, 11, 10, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(m(x), reference(m, x)) < 1e-10


def test_set_temperature_reaches_every_dynamic_layer():
    model = torch.nn.Sequential(create_conv2d("dynamic", 4, 4, 3), create_conv2d("static", 4, 4, 3),
                                create_conv2d("a2d2c_plus", 4, 4, 3))
    assert set_temperature(model, 30.0) == 2
    assert model[0].temperature == 30.0 and model[2].temperature == 30.0


def test_bad_arguments_raise_one_clear_error():
    with pytest.raises(ValueError, match=r"unknown conv type 'dynamc'.*did you mean 'dynamic'"):
        create_conv2d("dynamc", 4, 4, 3)
    with pytest.raises(ValueError, match=r"option 'num_kernel' .*did you mean 'num_kernels'"):
        create_conv2d("dynamic", 4, 4, 3, num_kernel=4)
    with pytest.raises(ValueError, match=r"not valid for conv type 'static'"):
        create_conv2d("static", 4, 4, 3, num_kernels=4)
    with pytest.raises(ValueError, match=r"groups=3 must divide in_channels=4"):
        create_conv2d("a2d2c", 4, 6, 3, groups=3)


@pytest.mark.parametrize("grouping", GROUPINGS)
def test_memory_saving_backward_matches_plain_autograd(grouping):
    # The aggregate path's custom backward against autograd through the kept kernels.
    grads = {}
    for path in ("aggregate", "unfold", "reference"):
        torch.manual_seed(1)
        m = build("dynamic", grouping, stride=2, path=path).double()
        x = torch.randn(3, m.in_channels, 8, 8, dtype=torch.float64, requires_grad=True)
        out = m(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        grads[path] = [x.grad] + [p.grad for p in m.parameters()]
    for path in ("aggregate", "unfold"):
        for a, b in zip(grads[path], grads["reference"]):
            assert rel_err(a, b) < 1e-10
