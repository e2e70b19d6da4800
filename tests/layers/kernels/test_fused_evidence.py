"""The fused evidence kernel (A2D2C's channel-mean and channel-max of each response) against the eager ops.

On CPU the kernels run under Triton's interpreter, in a process of their own (triton_utils.py).
"""
import pytest
import torch

from a2d2c.layers import create_conv2d
from a2d2c.layers.kernels.fused_evidence import fused_evidence, fused_evidence_applies
from a2d2c.layers.kernels.eager import response_evidence_eager
from helpers.triton_utils import needs_interpreter, rel_err, rerun_under_interpreter, responses_like_a_conv

pytest.importorskip("triton")


def test_kernels_under_the_interpreter():
    rerun_under_interpreter(__file__)


@needs_interpreter
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("out_channels", [10, 70])  # 70: the max is carried across two channel blocks
def test_fused_evidence_equals_the_eager_ops_with_gradient(channels_last, out_channels):
    responses = responses_like_a_conv(2, 3, out_channels, 5, 7, channels_last).requires_grad_()
    evidence = fused_evidence(responses)
    expected = response_evidence_eager(responses)
    grad_evidence = torch.randn_like(expected)
    (grad,) = torch.autograd.grad(evidence, [responses], grad_evidence)
    (grad_expected,) = torch.autograd.grad(expected, [responses], grad_evidence)
    assert evidence.shape == expected.shape and rel_err(evidence, expected) < 1e-6
    assert grad.stride() == responses.stride() and rel_err(grad, grad_expected) < 1e-6


@needs_interpreter
def test_a_tied_max_sends_its_whole_gradient_to_the_first_maximal_channel():
    responses = torch.zeros(1, 1, 4, 1, 1)
    responses[0, 0, [1, 3]] = 2.0  # channels 1 and 3 tie
    responses.requires_grad_()
    grad_evidence = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)  # d/d(max) only
    (grad,) = torch.autograd.grad(fused_evidence(responses), [responses], grad_evidence)
    assert grad.flatten().tolist() == [0.0, 1.0, 0.0, 0.0]


@needs_interpreter
def test_half_precision_responses():
    responses = responses_like_a_conv(2, 4, 16, 6, 6, channels_last=True, dtype=torch.float16).requires_grad_()
    evidence = fused_evidence(responses)
    assert evidence.dtype == torch.float16
    assert rel_err(evidence, response_evidence_eager(responses.detach().float())) < 1e-3


@needs_interpreter
def test_a2d2c_layers_reach_the_fused_evidence(monkeypatch):
    from a2d2c.layers.kernels import dispatch, fused_evidence as module
    calls = []
    monkeypatch.setattr(dispatch, "fused_evidence", lambda r: calls.append(r.shape) or module._FusedEvidence.apply(r))
    for conv_type in ("a2d2c", "a2d2c_plus"):
        create_conv2d(conv_type, 8, 8, 3)(torch.randn(2, 8, 6, 6)).sum().backward()
    assert len(calls) == 2
    monkeypatch.setenv("A2D2C_FUSED_MIX", "0")
    assert not fused_evidence_applies(torch.randn(2, 4, 8, 6, 6))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_evidence_on_cuda_equals_the_eager_ops(dtype):
    assert fused_evidence_applies(torch.empty(1, 1, 1, 1, 1, device="cuda"))
    # distinct integers along O (exact in bf16): no tied maxima, where the two gradients may differ
    order = torch.rand(8, 14, 14, 4 * 96, device="cuda").view(8, 14, 14, 4, 96).argsort(-1)
    responses = order.to(dtype).permute(0, 3, 4, 1, 2).requires_grad_()
    evidence = fused_evidence(responses)
    expected = response_evidence_eager(responses)
    assert rel_err(evidence, expected) < (1e-6 if dtype == torch.float32 else 1e-2)
    grad_evidence = torch.randn_like(expected)
    (grad,) = torch.autograd.grad(evidence, [responses], grad_evidence)
    (grad_expected,) = torch.autograd.grad(expected, [responses], grad_evidence)
    assert rel_err(grad, grad_expected) < (1e-6 if dtype == torch.float32 else 1e-2)
