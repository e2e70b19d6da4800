"""A fused Triton kernel that raises or writes nothing never stops a run or changes its numbers
(a2d2c/layers/kernels/health.py). On CPU the kernels run under Triton's interpreter, in a process of
their own (triton_utils.py); broken kernels are swapped in for the real ones."""
import copy

import pytest
import torch

from a2d2c.layers import create_conv2d
from a2d2c.layers.kernels import fused_evidence as fused_evidence_module
from a2d2c.layers.kernels import fused_mix as fused_mix_module
from a2d2c.layers.kernels import per_sample_conv as per_sample_conv_module
from a2d2c.layers.kernels.health import HEALTH
from helpers.reference_convs import reference
from helpers.triton_utils import needs_interpreter, rel_err, rerun_under_interpreter

pytest.importorskip("triton")


def test_fallback_under_the_interpreter():
    rerun_under_interpreter(__file__)


class Raising:
    """A kernel whose launch fails, as a PTX, compile or launch error would."""

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise RuntimeError("PTX JIT compiler library not found (a broken kernel of the test)")
        return launch


class WritingNothing:
    """A miscompiled kernel: it launches and returns, and writes nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


# kernel name -> (module, its forward kernels, its backward kernels, the layer that runs it)
KERNELS = {
    "fused_mix": (fused_mix_module, ["_mix_forward_kernel"], ["_mix_backward_kernel"], ("a2d2c", {})),
    "fused_evidence": (fused_evidence_module, ["_evidence_forward_kernel"], ["_evidence_backward_kernel"],
                       ("a2d2c_plus", {})),
    "per_sample_conv": (per_sample_conv_module, ["_forward_kernel"], ["_input_grad_kernel", "_kernel_grad_kernel"],
                        ("dynamic", {"path": "triton"})),
}


@pytest.fixture(autouse=True)
def fresh_health():
    HEALTH.reset()
    yield
    HEALTH.reset()


def run_and_check(m, warnings_before, caplog):
    """One training step of ``m`` (float32, fused where usable) against the float64 reference."""
    torch.manual_seed(1)
    m.zero_grad(set_to_none=True)
    x = torch.randn(3, m.in_channels, 9, 8, requires_grad=True)
    out = m(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_m = copy.deepcopy(m).double()
    x_ref = x.detach().double().requires_grad_()
    ref = reference(ref_m, x_ref)
    ref.backward(grad.double())
    assert rel_err(out, ref) < 1e-5
    assert rel_err(x.grad, x_ref.grad) < 1e-4
    assert rel_err(m.weight.grad, ref_m.weight.grad) < 1e-4
    return [r.getMessage() for r in caplog.records if "fused kernel" in r.getMessage()][warnings_before:]


@needs_interpreter
@pytest.mark.parametrize("broken", [Raising, WritingNothing])
@pytest.mark.parametrize("which", ["forward", "backward"])
@pytest.mark.parametrize("name", KERNELS)
def test_a_broken_kernel_is_checked_out_with_one_warning(name, which, broken, monkeypatch, caplog):
    module, forward, backward, (conv_type, options) = KERNELS[name]
    for kernel in forward if which == "forward" else backward:
        monkeypatch.setattr(module, kernel, broken())
    m = create_conv2d(conv_type, 6, 8, 3, stride=2, bias=True, **options)
    with caplog.at_level("WARNING"):
        warned = run_and_check(m, 0, caplog)
        assert len(warned) == 1, warned
        assert warned[0].startswith(f"fused kernel {name} (float32 on cpu) ")
        expected = "failed: RuntimeError: PTX JIT" if broken is Raising else "disagrees with the eager formula"
        assert expected in warned[0] and "for the rest of this process" in warned[0]
        assert run_and_check(m, 1, caplog) == []  # said once; the fallback stays
    assert HEALTH.usable(name, torch.zeros(1)) is False


@needs_interpreter
@pytest.mark.parametrize("which", ["forward", "backward"])
@pytest.mark.parametrize("name", KERNELS)
def test_a_kernel_that_fails_after_its_check_falls_back_at_that_call(name, which, monkeypatch, caplog):
    module, forward, backward, (conv_type, options) = KERNELS[name]
    m = create_conv2d(conv_type, 6, 8, 3, stride=2, bias=True, **options)
    with caplog.at_level("WARNING"):
        assert run_and_check(m, 0, caplog) == []  # the real kernels pass their check
        assert HEALTH.usable(name, torch.zeros(1)) is True
        for kernel in forward if which == "forward" else backward:
            monkeypatch.setattr(module, kernel, Raising())
        warned = run_and_check(m, 0, caplog)
    assert len(warned) == 1 and warned[0].startswith(f"fused kernel {name} (float32 on cpu) failed: RuntimeError")
    assert HEALTH.usable(name, torch.zeros(1)) is False


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", KERNELS)
def test_the_real_kernels_pass_their_checks(name, dtype):
    if name == "per_sample_conv" and dtype == torch.bfloat16:
        # Triton's interpreter multiplies bf16 tl.dot operands as their raw 16-bit patterns (ones
        # give 16256**2 per term), so here the check rightly refuses the kernel; a GPU checks it.
        assert "disagrees with the eager formula" in HEALTH.checks[name](torch.device("cpu"), dtype)
        return
    assert HEALTH.checks[name](torch.device("cpu"), dtype) == ""


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", KERNELS)
def test_the_real_kernels_pass_their_checks_on_cuda(name, dtype):
    assert HEALTH.checks[name](torch.device("cuda"), dtype) == ""


@needs_interpreter
@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "autocast"])
def test_a_first_use_without_gradients_still_checks_the_kernels_properly(context, caplog):
    # e.g. the first A2D2C forward of a process is an evaluation: the check must still pass
    m = create_conv2d("a2d2c", 6, 8, 3)
    scope = {"no_grad": torch.no_grad(), "inference_mode": torch.inference_mode(),
             "autocast": torch.autocast("cpu", dtype=torch.bfloat16)}[context]
    with caplog.at_level("WARNING"), scope:
        m(torch.randn(2, 6, 7, 7))
    assert not [r for r in caplog.records if "fused kernel" in r.getMessage()]
    assert HEALTH.usable("fused_mix", torch.zeros(1)) and HEALTH.usable("fused_evidence", torch.zeros(1))
