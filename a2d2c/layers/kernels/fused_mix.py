"""Fused attention-weighted mixing of K conv responses, as Triton kernels.

    y[b, o, p] = sum_k a[b, k, p] (R[b, k, o, p] + bias[k, o])

with R: B x K x O x H x W and a: B x K x H x W (A2D2C, A2D2C+: one attention per position) or B x K
(DyConv's K-responses path: one per sample, read with a zero position stride).

Why a kernel: the eager formula ``(R * a[:, :, None]).sum(1)`` writes a B x K x O x H x W product
and reads it back in the forward, and does the same for ``(R * g).sum(2)`` in the backward; these are
the largest tensors of an A2D2C layer. Here the forward reads R once and writes y, and the backward
reads R and the output gradient g once per k and writes dR and da in the same pass. Any strides are
accepted (NCHW or channels_last, R as the view a conv returns), so nothing is copied first.

Where it runs: triton_support.py (CUDA; CPU under the interpreter; never inside torch.compile or
export). Set ``A2D2C_FUSED_MIX=0`` to turn it off.
"""
from __future__ import annotations

from typing import Optional

import torch

from .eager import mix_responses_eager
from .health import HEALTH, compare
from .triton_support import (capturing_graph, fused_responses_enabled, response_blocks, response_layout, tl, triton,
                              triton_runs_on)


def fused_mix_applies(responses: torch.Tensor, attn: torch.Tensor) -> bool:
    """Whether ``mix_responses`` should run the kernels for these inputs."""
    if not fused_responses_enabled() or capturing_graph():
        return False
    return (triton_runs_on(responses) and triton_runs_on(attn) and attn.device == responses.device
            and attn.dim() in (2, 4) and responses.dim() == 5)


if triton is not None:
    @triton.jit
    def _mix_forward_kernel(R, A, BIAS, Y, O, P, W,
                            s_rb, s_rk, s_ro, s_rh, s_rw, s_ab, s_ak, s_ah, s_aw,
                            s_yb, s_yo, s_yh, s_yw,
                            K: tl.constexpr, HAS_BIAS: tl.constexpr,
                            BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr):
        pid_p, pid_o, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        mask_p, mask_o = offs_p < P, offs_o < O
        mask = mask_o[:, None] & mask_p[None, :]
        h, w = offs_p // W, offs_p % W
        r_pos = (h * s_rh + w * s_rw)[None, :] + offs_o[:, None] * s_ro
        acc = tl.zeros((BLOCK_O, BLOCK_P), dtype=tl.float32)
        for k in tl.static_range(K):
            a = tl.load(A + b * s_ab + k * s_ak + h * s_ah + w * s_aw, mask=mask_p, other=0.0).to(tl.float32)
            r = tl.load(R + b * s_rb + k * s_rk + r_pos, mask=mask, other=0.0).to(tl.float32)
            if HAS_BIAS:
                r += tl.load(BIAS + k * O + offs_o, mask=mask_o, other=0.0).to(tl.float32)[:, None]
            acc += r * a[None, :]
        y_pos = b * s_yb + offs_o[:, None] * s_yo + (h * s_yh + w * s_yw)[None, :]
        tl.store(Y + y_pos, acc.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _mix_backward_kernel(R, A, BIAS, G, DR, DA, O, P, W,
                             s_rb, s_rk, s_ro, s_rh, s_rw, s_ab, s_ak, s_ah, s_aw,
                             s_gb, s_go, s_gh, s_gw, s_db, s_dk, s_do, s_dh, s_dw,
                             K: tl.constexpr, HAS_BIAS: tl.constexpr, WRITE_DR: tl.constexpr,
                             BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr):
        # One program per (position block, sample); it walks all of O so da needs no atomics.
        # da is written per position (B x K x P); a per-sample attention sums it over P outside.
        pid_p, b = tl.program_id(0), tl.program_id(1)
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        h, w = offs_p // W, offs_p % W
        for k in tl.static_range(K):
            a = tl.load(A + b * s_ab + k * s_ak + h * s_ah + w * s_aw, mask=mask_p, other=0.0).to(tl.float32)
            da = tl.zeros((BLOCK_P,), dtype=tl.float32)
            for o_start in range(0, O, BLOCK_O):
                offs_o = o_start + tl.arange(0, BLOCK_O)
                mask_o = offs_o < O
                mask = mask_o[:, None] & mask_p[None, :]
                g = tl.load(G + b * s_gb + offs_o[:, None] * s_go + (h * s_gh + w * s_gw)[None, :],
                            mask=mask, other=0.0).to(tl.float32)
                r = tl.load(R + b * s_rb + k * s_rk + offs_o[:, None] * s_ro + (h * s_rh + w * s_rw)[None, :],
                            mask=mask, other=0.0).to(tl.float32)
                if HAS_BIAS:
                    r += tl.load(BIAS + k * O + offs_o, mask=mask_o, other=0.0).to(tl.float32)[:, None]
                da += tl.sum(r * g, axis=0)
                if WRITE_DR:
                    dr_pos = b * s_db + k * s_dk + offs_o[:, None] * s_do + (h * s_dh + w * s_dw)[None, :]
                    tl.store(DR + dr_pos, (g * a[None, :]).to(DR.dtype.element_ty), mask=mask)
            tl.store(DA + (b * K + k) * P + offs_p, da, mask=mask_p)


def _attention_strides(attn: torch.Tensor):
    """(b, k, h, w) strides; a per-sample attention repeats over positions with stride 0."""
    return tuple(attn.stride()) if attn.dim() == 4 else (*attn.stride(), 0, 0)


class _FusedMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, responses, attn, bias):
        b, k, o, h, w = responses.shape
        y = torch.empty((b, o, h, w), device=responses.device, dtype=responses.dtype,
                        memory_format=response_layout(responses))
        block_o, block_p = response_blocks(o, h * w)
        grid = (triton.cdiv(h * w, block_p), triton.cdiv(o, block_o), b)
        bias_arg = bias.contiguous() if bias is not None else responses  # never read without HAS_BIAS
        _mix_forward_kernel[grid](responses, attn, bias_arg, y, o, h * w, w, *responses.stride(),
                                  *_attention_strides(attn), *y.stride(),
                                  K=k, HAS_BIAS=bias is not None, BLOCK_O=block_o, BLOCK_P=block_p)
        ctx.save_for_backward(responses, attn, bias)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        return fused_mix_backward(*ctx.saved_tensors, grad_y, ctx.needs_input_grad)


def _kernel_backward(responses, attn, bias, grad_y, needs):
    """dR and da in one pass of the backward kernel; db as one matrix product."""
    b, k, o, h, w = responses.shape
    write_dr = needs[0]
    grad_r = torch.empty_like(responses) if write_dr else responses
    grad_a = torch.empty((b, k, h * w), device=responses.device, dtype=torch.float32)
    block_o, block_p = response_blocks(o, h * w)
    grid = (triton.cdiv(h * w, block_p), b)
    bias_arg = bias.contiguous() if bias is not None else responses
    _mix_backward_kernel[grid](responses, attn, bias_arg, grad_y, grad_r, grad_a, o, h * w, w,
                               *responses.stride(), *_attention_strides(attn), *grad_y.stride(),
                               *grad_r.stride(), K=k, HAS_BIAS=bias is not None, WRITE_DR=write_dr,
                               BLOCK_O=block_o, BLOCK_P=block_p)
    grad_a = grad_a.sum(2) if attn.dim() == 2 else grad_a.view(b, k, h, w)
    grad_bias = None
    if bias is not None and needs[2]:
        # sum over samples and positions of a[b, k, p] g[b, o, p]: one matrix product
        a = attn.float() if attn.dim() == 2 else attn.float().flatten(2)
        g = grad_y.float().sum((2, 3)) if attn.dim() == 2 else grad_y.float().flatten(2)
        grad_bias = (torch.einsum("bk,bo->ko", a, g) if attn.dim() == 2
                     else torch.einsum("bkp,bop->ko", a, g)).to(bias.dtype)
    return (grad_r if write_dr else None), grad_a.to(attn.dtype), grad_bias


def fused_mix_backward(responses, attn, bias, grad_y, needs):
    """Gradients of sum_k a_k (R_k + b_k) for (responses, attn, bias) (None where ``needs`` says
    so) by the backward kernel; if it fails, the eager formula's (kernel_health.py)."""
    try:
        return _kernel_backward(responses, attn, bias, grad_y, needs)
    except Exception as error:  # noqa: BLE001 - a failing kernel falls back, it never stops the run
        HEALTH.disable("fused_mix", responses, error)
        return eager_mix_backward(responses, attn, bias, grad_y, needs)


def eager_mix_backward(responses, attn, bias, grad_y, needs):
    """The backward of the eager formula (autograd through ``mix_responses_eager``)."""
    inputs = [None if t is None else t.detach().requires_grad_(need)
              for t, need in zip((responses, attn, bias), needs)]
    with torch.enable_grad():
        y = mix_responses_eager(*inputs)
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(y, wanted, grad_y) if wanted else ())
    return tuple(next(grads) if t is not None and t.requires_grad else None for t in inputs)


def fused_mix(responses: torch.Tensor, attn: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum_k attn_k (R_k + b_k) in one pass; same contract as ``dispatch.mix_responses``."""
    return _FusedMix.apply(responses, attn, bias)


def check_fused_mix(device: torch.device, dtype: torch.dtype) -> str:
    """Both kernels on a small problem (per-position and per-sample attention, bias), against eager."""
    generator = torch.Generator().manual_seed(0)
    for attn_shape in ((2, 3, 4, 5), (2, 3)):
        inputs = [torch.randn(shape, generator=generator).to(device, dtype).requires_grad_()
                  for shape in ((2, 3, 6, 4, 5), attn_shape, (3, 6))]
        grad_y = torch.randn(2, 6, 4, 5, generator=generator).to(device, dtype)
        y = fused_mix(*inputs)  # the fused result first: its outputs cannot be the eager ones' memory
        grads = torch.autograd.grad(y, inputs, grad_y)
        reference = [t.detach().float().requires_grad_() for t in inputs]
        y_ref = mix_responses_eager(*reference)
        grads_ref = torch.autograd.grad(y_ref, reference, grad_y.float())
        problem = compare([("output", y, y_ref)] + [(f"gradient {n}", g, r) for n, g, r in
                                                    zip(("responses", "attention", "bias"), grads, grads_ref)])
        if problem:
            return problem
    return ""


HEALTH.register("fused_mix", check_fused_mix)
