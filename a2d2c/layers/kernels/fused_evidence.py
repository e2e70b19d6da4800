"""A2D2C's evidence maps, channel-mean and channel-max of each response, in one Triton pass.

    E[b, k, p] = mean_o R[b, k, o, p],   E[b, K + k, p] = max_o R[b, k, o, p]

Eagerly that is two reads of the B x K x O x H x W responses (mean, amax), a concatenation, and in
backward a comparison of R with its max plus two full-size gradients that autograd then adds.
Here the forward reads R once and keeps the argmax (B x K x H x W int32); the backward writes
dR = dE_mean / O + [o = argmax] dE_max in one pass, without reading R. At a tie the whole max
gradient goes to the first maximal channel (torch's amax splits it): both are subgradients of max.

Where it runs: triton_support.py. ``A2D2C_FUSED_MIX=0`` turns it off with the fused mixing.
"""
from __future__ import annotations

import torch

from .eager import response_evidence_eager
from .health import HEALTH, compare
from .triton_support import (capturing_graph, fused_responses_enabled, response_blocks, response_layout, tl, triton,
                              triton_runs_on)


def fused_evidence_applies(responses: torch.Tensor) -> bool:
    return fused_responses_enabled() and not capturing_graph() and responses.dim() == 5 and triton_runs_on(responses)


if triton is not None:
    @triton.jit
    def _evidence_forward_kernel(R, E, ARGMAX, O, P, W, s_rb, s_rk, s_ro, s_rh, s_rw, s_eb, s_ec, s_eh, s_ew,
                                 K: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr):
        pid_p, bk = tl.program_id(0), tl.program_id(1)
        b, k = bk // K, bk % K
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        h, w = offs_p // W, offs_p % W
        total = tl.zeros((BLOCK_P,), dtype=tl.float32)
        best = tl.full((BLOCK_P,), float("-inf"), dtype=tl.float32)
        best_o = tl.zeros((BLOCK_P,), dtype=tl.int32)
        for o_start in range(0, O, BLOCK_O):
            offs_o = o_start + tl.arange(0, BLOCK_O)
            mask = (offs_o < O)[:, None] & mask_p[None, :]
            r = tl.load(R + b * s_rb + k * s_rk + offs_o[:, None] * s_ro + (h * s_rh + w * s_rw)[None, :],
                        mask=mask, other=float("-inf")).to(tl.float32)
            total += tl.sum(tl.where(mask, r, 0.0), axis=0)
            block_best = tl.max(r, axis=0)
            block_arg = tl.argmax(r, axis=0).to(tl.int32)
            better = block_best > best  # strict: the first maximal channel wins a tie
            best_o = tl.where(better, o_start + block_arg, best_o)
            best = tl.where(better, block_best, best)
        e = E + b * s_eb + h * s_eh + w * s_ew
        tl.store(e + k * s_ec, (total / O).to(E.dtype.element_ty), mask=mask_p)
        tl.store(e + (K + k) * s_ec, best.to(E.dtype.element_ty), mask=mask_p)
        tl.store(ARGMAX + bk * P + offs_p, best_o, mask=mask_p)

    @triton.jit
    def _evidence_backward_kernel(GE, ARGMAX, DR, O, P, W, s_gb, s_gc, s_gh, s_gw, s_db, s_dk, s_do, s_dh, s_dw,
                                  K: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr):
        pid_p, bk = tl.program_id(0), tl.program_id(1)
        b, k = bk // K, bk % K
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        h, w = offs_p // W, offs_p % W
        g = GE + b * s_gb + h * s_gh + w * s_gw
        g_mean = tl.load(g + k * s_gc, mask=mask_p, other=0.0).to(tl.float32) / O
        g_max = tl.load(g + (K + k) * s_gc, mask=mask_p, other=0.0).to(tl.float32)
        argmax = tl.load(ARGMAX + bk * P + offs_p, mask=mask_p, other=-1)
        for o_start in range(0, O, BLOCK_O):
            offs_o = o_start + tl.arange(0, BLOCK_O)
            mask = (offs_o < O)[:, None] & mask_p[None, :]
            grad = g_mean[None, :] + tl.where(offs_o[:, None] == argmax[None, :], g_max[None, :], 0.0)
            dr = DR + b * s_db + k * s_dk + offs_o[:, None] * s_do + (h * s_dh + w * s_dw)[None, :]
            tl.store(dr, grad.to(DR.dtype.element_ty), mask=mask)


class _FusedEvidence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, responses):
        b, k, o, h, w = responses.shape
        evidence = torch.empty((b, 2 * k, h, w), device=responses.device, dtype=responses.dtype,
                               memory_format=response_layout(responses))
        argmax = torch.empty((b, k, h * w), device=responses.device, dtype=torch.int32)
        block_o, block_p = response_blocks(o, h * w)
        _evidence_forward_kernel[(triton.cdiv(h * w, block_p), b * k)](
            responses, evidence, argmax, o, h * w, w, *responses.stride(), *evidence.stride(),
            K=k, BLOCK_O=block_o, BLOCK_P=block_p)
        ctx.save_for_backward(argmax)
        ctx.shape, ctx.stride = responses.shape, responses.stride()
        return evidence

    @staticmethod
    def backward(ctx, grad_evidence):
        try:
            return _FusedEvidence.fused_backward(ctx, grad_evidence)
        except Exception as error:  # noqa: BLE001 - a failing kernel falls back, it never stops the run
            HEALTH.disable("fused_evidence", grad_evidence, error)
            return _eager_backward(ctx, grad_evidence)

    @staticmethod
    def fused_backward(ctx, grad_evidence):
        (argmax,) = ctx.saved_tensors
        b, k, o, h, w = ctx.shape
        grad = torch.empty_strided(ctx.shape, ctx.stride, device=grad_evidence.device, dtype=grad_evidence.dtype)
        block_o, block_p = response_blocks(o, h * w)
        _evidence_backward_kernel[(triton.cdiv(h * w, block_p), b * k)](
            grad_evidence, argmax, grad, o, h * w, w, *grad_evidence.stride(), *grad.stride(),
            K=k, BLOCK_O=block_o, BLOCK_P=block_p)
        return grad


def _eager_backward(ctx, grad_evidence):
    """The gradient of [mean_o R, max_o R] in tensor ops, from the argmax the forward kernel kept."""
    (argmax,) = ctx.saved_tensors
    b, k, o, h, w = ctx.shape
    grad = (grad_evidence[:, :k] / o).unsqueeze(2).expand(b, k, o, h, w).reshape(b, k, o, h * w).clone()
    grad.scatter_add_(2, argmax.long().unsqueeze(2), grad_evidence[:, k:].reshape(b, k, 1, h * w))
    return grad.view(b, k, o, h, w)


def fused_evidence(responses: torch.Tensor) -> torch.Tensor:
    """B x K x O x H x W -> B x 2K x H x W; same contract as ``dispatch.response_evidence``."""
    return _FusedEvidence.apply(responses)


def check_fused_evidence(device: torch.device, dtype: torch.dtype) -> str:
    """Both kernels on a small problem, against the eager mean and max."""
    generator = torch.Generator().manual_seed(0)
    # Distinct values along O, exact in every dtype: no ties, so the max's gradient has one place.
    order = torch.rand(2, 3, 6, 4, 5, generator=generator).argsort(dim=2)
    responses = ((order - 2.5) / 2).to(device, dtype).requires_grad_()
    grad_e = torch.randn(2, 6, 4, 5, generator=generator).to(device, dtype)
    evidence = fused_evidence(responses)  # the fused result first: its outputs cannot be the eager ones' memory
    (grad,) = torch.autograd.grad(evidence, responses, grad_e)
    reference = responses.detach().float().requires_grad_()
    evidence_ref = response_evidence_eager(reference)
    (grad_ref,) = torch.autograd.grad(evidence_ref, reference, grad_e.float())
    return compare([("output", evidence, evidence_ref), ("gradient", grad, grad_ref)])


HEALTH.register("fused_evidence", check_fused_evidence)
