"""The K-responses pipeline's two formulas in plain tensor ops: the reference the fused Triton
kernels are checked against (kernel_health.py), their fallback, and what torch.compile and ONNX
export see. ``dispatch.mix_responses`` and ``dispatch.response_evidence`` choose between
these and the kernels; the kernel modules import them from here.
"""
from __future__ import annotations

from typing import Optional

import torch


def mix_responses_eager(responses: torch.Tensor, attn: torch.Tensor,
                        bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``mix_responses`` in plain tensor ops: the reference, and what compile and export see."""
    attn = attn.to(responses.dtype)
    if attn.dim() == 2:
        attn = attn[:, :, None, None]
    out = (responses * attn.unsqueeze(2)).sum(1)
    if bias is not None:
        # sum_k a_k(p) b_k[o]: B x K x ... against K x O
        if attn.shape[-1] == 1 and attn.shape[-2] == 1:
            out = out + (attn[:, :, 0, 0] @ bias.to(out.dtype))[:, :, None, None]
        else:
            out = out + torch.einsum("bkhw,ko->bohw", attn, bias.to(out.dtype))
    return out


def response_evidence_eager(responses: torch.Tensor) -> torch.Tensor:
    """``response_evidence`` in plain tensor ops: the reference, and what compile and export see.

    ``max`` rather than ``amax``: its backward keeps the argmax, not the B x K x O x H x W
    responses (as the fused kernel); the two differ only where a maximum is tied.
    """
    return torch.cat([responses.mean(2), responses.max(2).values], dim=1)
