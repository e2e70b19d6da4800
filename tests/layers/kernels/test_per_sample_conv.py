"""The Triton per-sample conv (DynamicConv2d path="triton") against per-sample F.conv2d and the naive reference.

On CPU the kernels run under Triton's interpreter, in a process of their own (triton_utils.py).
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from a2d2c.layers import create_conv2d
from a2d2c.layers.functional import aggregate_kernels
from a2d2c.layers.kernels.per_sample_conv import per_sample_conv, per_sample_conv_applies, per_sample_conv_backward
from helpers.reference_convs import reference
from helpers.triton_utils import INTERPRETED, needs_interpreter, rel_err, rerun_under_interpreter

pytest.importorskip("triton")


def test_kernels_under_the_interpreter():
    rerun_under_interpreter(__file__)


def per_sample_f_conv(x, attn, weight, stride, padding, dilation):
    """One F.conv2d per sample with its aggregated kernel: the plainest statement of the operator."""
    kernels = sample_kernels(attn, weight)
    return torch.cat([F.conv2d(x[i:i + 1], kernels[i], None, stride, padding, dilation) for i in range(len(x))])


# (C, O, kernel, stride, padding, dilation, H, W): O, C*k*k and H*W off the block sizes; strided and dilated taps
SHAPES = [(5, 7, 3, (1, 1), (1, 1), (1, 1), 6, 5), (5, 7, 3, (2, 2), (1, 1), (1, 1), 7, 6),
          (4, 6, 1, (1, 1), (0, 0), (1, 1), 5, 5), (3, 20, 3, (2, 1), (2, 1), (2, 1), 9, 8),
          (6, 4, 5, (1, 2), (2, 2), (1, 1), 8, 9)]


def sample_kernels(attn, weight):
    """W_b: B x K attn mixes whole kernels, B x K x kh x kw (tap-wise) mixes each tap (r, s) on its own."""
    return aggregate_kernels(attn, weight) if attn.dim() == 2 else torch.einsum("bkrs,kocrs->bocrs", attn, weight)


@needs_interpreter
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("tapwise", [False, True])
def test_kernels_equal_per_sample_conv2d_with_both_gradients(shape, channels_last, tapwise):
    c, o, k, stride, padding, dilation, h, w = shape
    x = torch.randn(3, c, h, w)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    attn, weight = torch.randn(3, 4, *((k, k) if tapwise else ())).softmax(1), torch.randn(4, o, c, k, k)
    y = per_sample_conv(x, attn, weight, stride, padding, dilation)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    x_ref = x.detach().clone().requires_grad_()
    kernels = sample_kernels(attn, weight).requires_grad_()
    y_ref = torch.cat([F.conv2d(x_ref[i:i + 1], kernels[i], None, stride, padding, dilation) for i in range(3)])
    grad_y = torch.randn_like(y_ref)
    grad_x_ref, grad_kernels_ref = torch.autograd.grad(y_ref, [x_ref, kernels], grad_y)
    grad_x, grad_kernels = per_sample_conv_backward(grad_y, x, attn, weight, stride, padding, dilation, (True, True))
    assert rel_err(y, y_ref) < 1e-6
    assert rel_err(grad_x, grad_x_ref) < 1e-6 and rel_err(grad_kernels, grad_kernels_ref) < 1e-6


@needs_interpreter
@pytest.mark.parametrize("tapwise", [False, True])
def test_half_precision_inputs_accumulate_in_float(tapwise):
    x, attn = torch.randn(2, 8, 6, 6), torch.randn(2, 3, *((3, 3) if tapwise else ())).softmax(1)
    weight = torch.randn(3, 16, 8, 3, 3)
    expected = per_sample_f_conv(x, attn, weight, (1, 1), (1, 1), (1, 1))
    y = per_sample_conv(x.half(), attn.half(), weight.half(), (1, 1), (1, 1), (1, 1))
    assert y.dtype == torch.float16 and rel_err(y, expected) < 2e-3


@needs_interpreter
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("conv_type", ["dynamic", "odconv"])  # odconv: tap-wise attention (its spatial head)
def test_triton_path_matches_the_naive_reference_and_the_aggregate_path_gradients(stride, bias, conv_type):
    m = create_conv2d(conv_type, 6, 10, 3, stride=stride, bias=bias, path="triton", temperature=0.7)
    if conv_type == "odconv":
        m.eval()  # its attention's BN: the reference and the second forward see the same statistics
    x = torch.randn(3, 6, 9, 8)
    assert m.select_path(x) == "triton"
    out = m(x)
    out.square().sum().backward()
    assert rel_err(out.detach(), reference(copy.deepcopy(m).double(), x.double())) < 1e-5
    plain = copy.deepcopy(m)
    plain.path = "aggregate"
    plain.zero_grad()
    plain(x).square().sum().backward()
    for (name, p), q in zip(m.named_parameters(), plain.parameters()):
        assert rel_err(p.grad, q.grad) < 1e-5, name
    with torch.no_grad():  # inference: the kernels straight from pi and W, nothing saved
        assert rel_err(m(x), out.detach()) < 1e-6


@needs_interpreter
def test_tune_times_the_triton_path_where_it_applies(monkeypatch):
    from a2d2c.layers.kernels.path_tuning import TUNER
    seen = []
    monkeypatch.setattr(TUNER, "choices", {})
    monkeypatch.setattr(TUNER, "choose", lambda key, run, device, candidates: seen.append(candidates) or "triton")
    create_conv2d("dynamic", 4, 4, 3, path="tune")(torch.randn(2, 4, 6, 6))
    create_conv2d("dynamic", 4, 4, 3, groups=2, path="tune")(torch.randn(2, 4, 6, 6))
    assert "triton" in seen[0] and "triton" not in seen[1]  # grouped convs keep the other paths


def test_the_triton_path_is_aggregate_where_the_kernels_do_not_apply():
    grouped = create_conv2d("dynamic", 4, 4, 3, groups=2, path="triton")
    x = torch.randn(2, 4, 6, 6)
    assert not per_sample_conv_applies(x, 2) and grouped.select_path(x) == "aggregate"
    if not INTERPRETED:  # plain CPU tensors: no Triton backend to run them
        assert not per_sample_conv_applies(x, 1)
        assert create_conv2d("dynamic", 4, 4, 3, path="triton").select_path(x) == "aggregate"
    assert not per_sample_conv_applies(x.double(), 1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-3), (torch.bfloat16, 2e-2)])  # fp32 runs as TF32
@pytest.mark.parametrize("stride", [1, 2])
def test_triton_path_on_cuda_matches_the_aggregate_path(dtype, tol, stride):
    torch.manual_seed(0)
    m = create_conv2d("dynamic", 64, 96, 3, stride=stride, bias=True, path="triton").cuda()
    x = torch.randn(16, 64, 28, 28, device="cuda").to(memory_format=torch.channels_last)
    assert m.select_path(x) == "triton"
    plain = copy.deepcopy(m)
    plain.path = "aggregate"
    outs = []
    for layer in (m, plain):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            out = layer(x)
        out.float().square().mean().backward()
        outs.append(out.float())
    assert rel_err(outs[0], outs[1]) < tol
    for p, q in zip(m.parameters(), plain.parameters()):
        assert rel_err(p.grad, q.grad) < tol
