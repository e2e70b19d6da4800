"""The fused Triton mixing kernels against the eager formula and the naive references.

On CPU the kernels run under Triton's interpreter, in a process of their own (triton_utils.py).
"""
import copy

import pytest
import torch

from a2d2c.layers import create_conv2d
from a2d2c.layers.kernels import dispatch, fused_mix as fused_mix_module
from a2d2c.layers.kernels.dispatch import mix_responses
from a2d2c.layers.kernels.eager import mix_responses_eager
from helpers.reference_convs import reference
from helpers.triton_utils import needs_interpreter, rel_err, rerun_under_interpreter, responses_like_a_conv

pytest.importorskip("triton")


def test_kernels_under_the_interpreter():
    rerun_under_interpreter(__file__)


def check_against_eager(fused, responses, attn, bias, tol):
    leaves = [t.requires_grad_() for t in (responses, attn, bias) if t is not None]
    y = fused(responses, attn, bias)
    grad_y = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, grad_y)
    y_ref = mix_responses_eager(*(t.float() if t is not None else None for t in (responses, attn, bias)))
    grads_ref = torch.autograd.grad(y_ref, leaves, grad_y.float())
    assert y.dtype == responses.dtype and y.shape == y_ref.shape
    assert rel_err(y, y_ref) < tol
    for g, g_ref, leaf in zip(grads, grads_ref, leaves):
        assert g.shape == leaf.shape and g.dtype == leaf.dtype
        assert rel_err(g, g_ref) < tol
    return y


@needs_interpreter
@pytest.mark.parametrize("per_position", [True, False], ids=["a2d2c-attention", "dyconv-attention"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_mix_equals_the_eager_formula_with_gradients(per_position, bias, channels_last):
    b, k, o, h, w = 3, 4, 10, 5, 7  # O and H*W not multiples of the block sizes
    responses = responses_like_a_conv(b, k, o, h, w, channels_last)
    attn = torch.randn(b, k, h, w) if per_position else torch.randn(b, k)
    y = check_against_eager(fused_mix_module.fused_mix, responses, attn.softmax(1),
                            torch.randn(k, o) if bias else None, tol=1e-6)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@needs_interpreter
def test_fused_mix_keeps_half_precision_responses_and_accumulates_in_float():
    responses = responses_like_a_conv(2, 3, 8, 4, 4, channels_last=True, dtype=torch.float16)
    check_against_eager(fused_mix_module.fused_mix, responses, torch.randn(2, 3, 4, 4).softmax(1), None, tol=2e-3)


@needs_interpreter
def test_only_the_gradients_that_are_needed_are_written():
    responses = responses_like_a_conv(2, 3, 8, 4, 4, channels_last=False)  # no grad: a frozen conv
    attn = torch.randn(2, 3, 4, 4).softmax(1).requires_grad_()
    (grad_attn,) = torch.autograd.grad(fused_mix_module.fused_mix(responses, attn).sum(), [attn])
    (grad_ref,) = torch.autograd.grad(mix_responses_eager(responses, attn).sum(), [attn])
    assert rel_err(grad_attn, grad_ref) < 1e-6


@needs_interpreter
@pytest.mark.parametrize("conv_type,opts", [("a2d2c", {}), ("a2d2c", {"recompute_responses": True}),
                                            ("a2d2c_plus", {}), ("dynamic", {"path": "responses"})])
@pytest.mark.parametrize("groups", [1, 2])
def test_layers_take_the_fused_path_and_match_the_naive_reference(monkeypatch, conv_type, opts, groups):
    calls = []
    monkeypatch.setattr(dispatch, "fused_mix", lambda *a: calls.append(1) or fused_mix_module._FusedMix.apply(*a))
    m = create_conv2d(conv_type, 4, 6, 3, stride=2, groups=groups, bias=conv_type != "a2d2c_plus", **opts)
    x = torch.randn(3, 4, 9, 8)
    out = m(x)
    out.square().sum().backward()
    assert calls, "the layer did not reach the fused kernels"
    assert rel_err(out.detach(), reference(copy.deepcopy(m).double(), x.double())) < 1e-5
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)


@needs_interpreter
def test_eager_formula_where_the_kernels_do_not_apply(monkeypatch):
    responses, attn = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3)
    assert fused_mix_module.fused_mix_applies(responses, attn)
    assert not fused_mix_module.fused_mix_applies(responses.double(), attn.double())  # float64: the references
    monkeypatch.setenv("A2D2C_FUSED_MIX", "0")
    assert not fused_mix_module.fused_mix_applies(responses, attn)
    monkeypatch.setenv("A2D2C_FUSED_MIX", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # (read per call by fused_mix_applies)
    assert not fused_mix_module.fused_mix_applies(responses, attn)  # CPU tensors only under the interpreter
    assert torch.equal(mix_responses(responses, attn), mix_responses_eager(responses, attn))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_position", [True, False])
def test_fused_mix_on_cuda_equals_the_eager_formula(dtype, per_position):
    assert fused_mix_module.fused_mix_applies(torch.empty(1, 1, 1, 1, 1, device="cuda"), torch.empty(1, 1, device="cuda"))
    b, k, o, h, w = 8, 4, 96, 14, 14
    responses = responses_like_a_conv(b, k, o, h, w, channels_last=True, dtype=dtype, device="cuda")
    attn = (torch.randn(b, k, h, w, device="cuda") if per_position else torch.randn(b, k, device="cuda")).softmax(1)
    check_against_eager(fused_mix_module.fused_mix, responses, attn, torch.randn(k, o, device="cuda"),
                        tol=1e-5 if dtype == torch.float32 else 1e-2)


@needs_interpreter
def test_recomputed_responses_give_the_same_gradients_on_the_fused_path():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 9, 8)
    grads = []
    for recompute in (True, False):
        torch.manual_seed(1)
        m = create_conv2d("a2d2c", 4, 6, 3, bias=True, recompute_responses=recompute)
        xx = x.clone().requires_grad_()
        m(xx).square().sum().backward()
        grads.append([xx.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        assert rel_err(a, b) < 1e-5
