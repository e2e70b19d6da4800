"""A convolution with one kernel per sample, W_b = sum_k pi_bk W_k, as Triton implicit-GEMM kernels.

The usual ways to run DyConv's per-sample kernels are a grouped conv with groups = B (slow kernels
for large per-sample weights) or im2col + a batched matmul (a 9x copy of the input). These kernels
do what a dense conv does, per sample: every program computes a tile of one sample's output as a
matrix product over (c, r, s) whose input tile is gathered straight from x (implicit GEMM), and
the forward and input-gradient kernels build their tile of W_b from the K candidate kernels on
the fly, so the B x O x C x kh x kw per-sample kernels never exist in memory.

    forward        y[b, o, p]          = sum_{c,r,s} x[b, c, p*stride + (r, s)*dilation - pad] W_b[o, c, r, s]
    input grad     dx[b, c, q]         = sum_{o,r,s} dy[b, o, (q + pad - (r, s)*dilation) / stride] W_b[o, c, r, s]
    kernel grad    dW_b[o, c, r, s]    = sum_p dy[b, o, p] x[b, c, p*stride + (r, s)*dilation - pad]

then dpi_bk = <dW_b, W_k> and dW_k = sum_b pi_bk dW_b as two matrix products (aggregated_conv.py).
attn is B x K (DyConv) or B x K x kh x kw, tap-wise (ODConv): W_b[o, c, r, s] = sum_k pi_bkrs W_k[o, c, r, s].
Dense convs only (groups = 1): that is where the grouped conv is slow; grouped and depthwise layers
keep the other paths. Any strides for x and dy (NCHW or channels_last); accumulation in float32;
float32 inputs multiply in TF32 when ``torch.backends.cudnn.allow_tf32`` (torch's default for convs).
"""
from __future__ import annotations

import torch

from .health import HEALTH, compare
from .triton_support import tl, triton, triton_runs_on


def per_sample_conv_applies(x: torch.Tensor, groups: int) -> bool:
    """Whether the Triton kernels can run this conv: dense, float, on CUDA (or the interpreter), and
    they passed their check for this device and dtype (kernel_health.py)."""
    return groups == 1 and triton_runs_on(x) and HEALTH.usable("per_sample_conv", x)


if triton is not None:
    @triton.jit
    def _load_sample_kernel(WT, A, b, s_ab, s_ak, s_ar, s_as, s_wk, r, s, mask_j, out_offsets, mask,
                            NUM_K: tl.constexpr, TAPWISE: tl.constexpr):
        """sum_k pi_bk W_k at `out_offsets` (a tile of one kernel's element offsets, reduction index j
        along dim 0 with taps r, s), in float32. TAPWISE: pi_bk[r, s] per j, broadcast along dim 1."""
        tile = tl.zeros(out_offsets.shape, dtype=tl.float32)
        for k in tl.static_range(NUM_K):
            if TAPWISE:
                pi = tl.load(A + b * s_ab + k * s_ak + r * s_ar + s * s_as, mask=mask_j, other=0.0)
                pi = pi.to(tl.float32)[:, None]
            else:
                pi = tl.load(A + b * s_ab + k * s_ak).to(tl.float32)
            tile += pi * tl.load(WT + k * s_wk + out_offsets, mask=mask, other=0.0).to(tl.float32)
        return tile

    @triton.jit
    def _forward_kernel(X, A, WT, Y, C, H, W, O, HO, WO,
                        s_xb, s_xc, s_xh, s_xw, s_ab, s_ak, s_ar, s_as, s_wk, s_wo, s_wc, s_wr, s_ws,
                        s_yb, s_yo, s_yh, s_yw, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
                        KH: tl.constexpr, KW: tl.constexpr, NUM_K: tl.constexpr, TAPWISE: tl.constexpr,
                        PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m, pid_n, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output positions of sample b
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels
        mask_m, mask_n = offs_m < HO * WO, offs_n < O
        oh, ow = offs_m // WO, offs_m % WO
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for j0 in range(0, C * KH * KW, BLOCK_K):  # reduction index j = (r * KW + s) * C + c
            j = j0 + tl.arange(0, BLOCK_K)
            mask_j = j < C * KH * KW
            c, r, s = j % C, (j // C) // KW, (j // C) % KW
            ih = oh[:, None] * STRIDE_H - PAD_H + r[None, :] * DIL_H
            iw = ow[:, None] * STRIDE_W - PAD_W + s[None, :] * DIL_W
            inside = mask_m[:, None] & mask_j[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x = tl.load(X + b * s_xb + c[None, :] * s_xc + ih * s_xh + iw * s_xw, mask=inside, other=0.0)
            w_offsets = offs_n[None, :] * s_wo + (c * s_wc + r * s_wr + s * s_ws)[:, None]
            w = _load_sample_kernel(WT, A, b, s_ab, s_ak, s_ar, s_as, s_wk, r, s, mask_j, w_offsets,
                                    mask_j[:, None] & mask_n[None, :], NUM_K, TAPWISE)
            acc += tl.dot(x, w.to(x.dtype), input_precision=PRECISION)
        y = Y + b * s_yb + offs_n[None, :] * s_yo + (oh * s_yh + ow * s_yw)[:, None]
        tl.store(y, acc.to(Y.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])

    @triton.jit
    def _input_grad_kernel(G, A, WT, DX, C, H, W, O, HO, WO,
                           s_gb, s_go, s_gh, s_gw, s_ab, s_ak, s_ar, s_as, s_wk, s_wo, s_wc, s_wr, s_ws,
                           s_db, s_dc, s_dh, s_dw, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
                           KH: tl.constexpr, KW: tl.constexpr, NUM_K: tl.constexpr, TAPWISE: tl.constexpr,
                           PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m, pid_n, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # input positions of sample b
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # input channels
        mask_m, mask_n = offs_m < H * W, offs_n < C
        ih, iw = offs_m // W, offs_m % W
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for j0 in range(0, O * KH * KW, BLOCK_K):  # reduction index j = (r * KW + s) * O + o
            j = j0 + tl.arange(0, BLOCK_K)
            mask_j = j < O * KH * KW
            o, r, s = j % O, (j // O) // KW, (j // O) % KW
            th = ih[:, None] + PAD_H - r[None, :] * DIL_H  # = oh * stride when position q sees tap (r, s)
            tw = iw[:, None] + PAD_W - s[None, :] * DIL_W
            oh, ow = th // STRIDE_H, tw // STRIDE_W
            hit = (mask_m[:, None] & mask_j[None, :] & (th >= 0) & (tw >= 0) & (th % STRIDE_H == 0)
                   & (tw % STRIDE_W == 0) & (oh < HO) & (ow < WO))
            g = tl.load(G + b * s_gb + o[None, :] * s_go + oh * s_gh + ow * s_gw, mask=hit, other=0.0)
            w_offsets = offs_n[None, :] * s_wc + (o * s_wo + r * s_wr + s * s_ws)[:, None]
            w = _load_sample_kernel(WT, A, b, s_ab, s_ak, s_ar, s_as, s_wk, r, s, mask_j, w_offsets,
                                    mask_j[:, None] & mask_n[None, :], NUM_K, TAPWISE)
            acc += tl.dot(g, w.to(g.dtype), input_precision=PRECISION)
        dx = DX + b * s_db + offs_n[None, :] * s_dc + (ih * s_dh + iw * s_dw)[:, None]
        tl.store(dx, acc.to(DX.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])

    @triton.jit
    def _kernel_grad_kernel(G, X, DW, C, H, W, O, HO, WO,
                            s_gb, s_go, s_gh, s_gw, s_xb, s_xc, s_xh, s_xw,
                            STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
                            KH: tl.constexpr, KW: tl.constexpr, PRECISION: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m, pid_n, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output channels o
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # kernel elements j = (c * KH + r) * KW + s
        mask_m, mask_n = offs_m < O, offs_n < C * KH * KW
        c, r, s = offs_n // (KH * KW), (offs_n // KW) % KH, offs_n % KW
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for p0 in range(0, HO * WO, BLOCK_K):  # reduction over output positions
            p = p0 + tl.arange(0, BLOCK_K)
            mask_p = p < HO * WO
            oh, ow = p // WO, p % WO
            g = tl.load(G + b * s_gb + offs_m[:, None] * s_go + (oh * s_gh + ow * s_gw)[None, :],
                        mask=mask_m[:, None] & mask_p[None, :], other=0.0)
            ih = oh[:, None] * STRIDE_H - PAD_H + r[None, :] * DIL_H
            iw = ow[:, None] * STRIDE_W - PAD_W + s[None, :] * DIL_W
            inside = mask_p[:, None] & mask_n[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x = tl.load(X + b * s_xb + c[None, :] * s_xc + ih * s_xh + iw * s_xw, mask=inside, other=0.0)
            acc += tl.dot(g, x.to(g.dtype), input_precision=PRECISION)
        dw = DW + (b * O + offs_m[:, None]) * (C * KH * KW) + offs_n[None, :]  # B x O x C x KH x KW, contiguous
        tl.store(dw, acc.to(DW.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _blocks(m: int, n: int):
    """Tile sizes: 64 x 64 x 32 where the problem is that large, never below tl.dot's 16."""
    block = lambda size, cap: max(16, min(cap, triton.next_power_of_2(size)))  # noqa: E731
    return block(m, 64), block(n, 64), 32


def _precision(dtype: torch.dtype) -> str:
    # float32 inputs use TF32 on the tensor cores exactly when torch lets cuDNN convs do so; TF32
    # means nothing for bf16 / fp16 inputs (under the interpreter it garbles them: values of 1e10)
    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


def _output_size(x, weight, stride, padding, dilation):
    kh, kw = weight.shape[-2:]
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, p, d, k, s in zip(x.shape[-2:], padding, dilation, (kh, kw), stride))


def _layout(t: torch.Tensor):
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) and t.shape[1] > 1 \
        else torch.contiguous_format


def _attn_strides(attn: torch.Tensor, weight: torch.Tensor):
    """(s_ab, s_ak, s_ar, s_as), TAPWISE: B x K attn has no tap strides (0, 0)."""
    if attn.dim() == 2:
        return (*attn.stride(), 0, 0), False
    assert attn.dim() == 4 and attn.shape[1:] == (weight.shape[0], *weight.shape[-2:]), (attn.shape, weight.shape)
    return attn.stride(), True


def per_sample_conv(x, attn, weight, stride, padding, dilation) -> torch.Tensor:
    """conv(x_b, sum_k attn_bk W_k) for every sample b; weight: K x O x C x kh x kw (groups = 1);
    attn: B x K, or B x K x kh x kw (tap-wise)."""
    b, c, h, w = x.shape
    attn_strides, tapwise = _attn_strides(attn, weight)
    k, o, _, kh, kw = weight.shape
    ho, wo = _output_size(x, weight, stride, padding, dilation)
    y = torch.empty((b, o, ho, wo), device=x.device, dtype=x.dtype, memory_format=_layout(x))
    block_m, block_n, block_k = _blocks(ho * wo, o)
    grid = (triton.cdiv(ho * wo, block_m), triton.cdiv(o, block_n), b)
    _forward_kernel[grid](x, attn, weight, y, c, h, w, o, ho, wo, *x.stride(), *attn_strides, *weight.stride(),
                          *y.stride(), *stride, *padding, *dilation, KH=kh, KW=kw, NUM_K=k, TAPWISE=tapwise,
                          PRECISION=_precision(x.dtype), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return y


def per_sample_conv_backward(grad_y, x, attn, weight, stride, padding, dilation, needs):
    """(dL/dx or None, dL/dW_b as B x O x C x kh x kw or None) for ``needs`` = (x, kernels); attn as above."""
    b, c, h, w = x.shape
    k, o, _, kh, kw = weight.shape
    ho, wo = grad_y.shape[-2:]
    grad_x = grad_kernels = None
    if needs[0]:
        attn_strides, tapwise = _attn_strides(attn, weight)
        grad_x = torch.empty_like(x, memory_format=_layout(x))
        block_m, block_n, block_k = _blocks(h * w, c)
        grid = (triton.cdiv(h * w, block_m), triton.cdiv(c, block_n), b)
        _input_grad_kernel[grid](grad_y, attn, weight, grad_x, c, h, w, o, ho, wo, *grad_y.stride(), *attn_strides,
                                 *weight.stride(), *grad_x.stride(), *stride, *padding, *dilation,
                                 KH=kh, KW=kw, NUM_K=k, TAPWISE=tapwise, PRECISION=_precision(x.dtype),
                                 BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    if needs[1]:
        grad_kernels = torch.empty((b, o, c, kh, kw), device=x.device, dtype=x.dtype)
        block_m, block_n, block_k = _blocks(o, c * kh * kw)
        grid = (triton.cdiv(o, block_m), triton.cdiv(c * kh * kw, block_n), b)
        _kernel_grad_kernel[grid](grad_y, x, grad_kernels, c, h, w, o, ho, wo, *grad_y.stride(), *x.stride(),
                                  *stride, *padding, *dilation, KH=kh, KW=kw, PRECISION=_precision(x.dtype),
                                  BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return grad_x, grad_kernels


def check_per_sample_conv(device: torch.device, dtype: torch.dtype) -> str:
    """The three kernels on a small strided problem, with B x K and tap-wise B x K x kh x kw attn,
    against per-sample convs in float32."""
    import torch.nn.functional as F
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 6, generator=generator).to(device, dtype)
    weight = torch.randn(2, 5, 3, 3, 3, generator=generator).to(device, dtype)
    attn = torch.softmax(torch.randn(2, 2, generator=generator), 1).to(device, dtype)
    grad_y = torch.randn(2, 5, 4, 3, generator=generator).to(device, dtype)
    tapwise = torch.softmax(torch.randn(2, 2, 3, 3, generator=generator), 1).to(device, dtype)
    conv = ((2, 2), (1, 1), (1, 1))
    # the fused results first: not the eager ones' memory
    fused = [(a, per_sample_conv(x, a, weight, *conv), *per_sample_conv_backward(grad_y, x, a, weight, *conv, needs))
             for a, needs in ((attn, (True, True)), (tapwise, (True, False)))]
    pairs = []
    for a, y, grad_x, grad_kernels in fused:
        a4 = a.float() if a.dim() == 4 else a.float()[:, :, None, None].expand(-1, -1, 3, 3)
        kernels = torch.einsum("bkrs,kocrs->bocrs", a4, weight.float())
        xs = x.float().requires_grad_()
        outs, grads_w = [], []
        for b in range(2):
            kernel = kernels[b].clone().requires_grad_()
            out = F.conv2d(xs[b:b + 1], kernel, None, *conv)
            (g,) = torch.autograd.grad(out, kernel, grad_y[b:b + 1].float(), retain_graph=True)
            outs.append(out)
            grads_w.append(g)
        y_ref = torch.cat(outs)
        (grad_x_ref,) = torch.autograd.grad(y_ref, xs, grad_y.float())
        label = " (tap-wise attn)" if a.dim() == 4 else ""
        pairs += [("output" + label, y, y_ref), ("input gradient" + label, grad_x, grad_x_ref)]
        if grad_kernels is not None:  # the kernel gradient does not depend on attn: checked once
            pairs.append(("kernel gradient", grad_kernels, torch.stack(grads_w)))
    return compare(pairs)


HEALTH.register("per_sample_conv", check_per_sample_conv)
