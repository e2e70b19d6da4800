"""The CUDA paths against the float64 references (run where a GPU is present)."""
import itertools

import pytest
import torch

from a2d2c.layers import create_conv2d
from helpers.reference_convs import reference

pytestmark = pytest.mark.gpu

CASES = [("dynamic", {"path": p}) for p in ("aggregate", "unfold", "triton", "responses", "reference", "tune")] + \
        [("a2d2c", {}), ("a2d2c_plus", {})]


@pytest.mark.parametrize("conv_type,opts", CASES)
@pytest.mark.parametrize("groups,stride,batch", itertools.product((1, 2, 16), (1, 2), (1, 6)))
def test_cuda_matches_reference(conv_type, opts, groups, stride, batch):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    m = create_conv2d(conv_type, 16, 16, 3, stride=stride, groups=groups, bias=True, **opts)
    x = torch.randn(batch, 16, 12, 12)
    with torch.no_grad():
        expected = reference(m.double(), x.double())
        got = m.float().cuda()(x.cuda()).cpu().double()
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


@pytest.mark.parametrize("conv_type,opts", CASES)
def test_cuda_bf16_channels_last_train_step(conv_type, opts):
    m = create_conv2d(conv_type, 32, 64, 3, bias=True, **opts).cuda()
    m = m.to(memory_format=torch.channels_last)
    x = torch.randn(8, 32, 14, 14, device="cuda").contiguous(memory_format=torch.channels_last)
    expected = m(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = m(x)
    out.float().square().mean().backward()
    assert ((out.float() - expected).norm() / expected.norm()).item() < 3e-2
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_aggregate_backward_keeps_no_per_sample_kernels():
    # Peak memory of a training step: the recomputing backward against the usual one.
    peaks = {}
    for path in ("aggregate", "unfold", "reference"):
        torch.manual_seed(0)
        m = create_conv2d("dynamic", 256, 256, 3, path=path).cuda()
        x = torch.randn(64, 256, 14, 14, device="cuda", requires_grad=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        m(x).square().mean().backward()
        torch.cuda.synchronize()
        peaks[path] = torch.cuda.max_memory_allocated() - base
    kernels_bytes = 64 * 256 * 256 * 9 * 4
    for path in ("aggregate", "unfold"):
        assert peaks["reference"] - peaks[path] >= 0.9 * kernels_bytes
