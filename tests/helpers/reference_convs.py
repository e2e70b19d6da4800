"""Naive float64 references for the conv types, written from DESIGN.md's math and independent
of the package's code paths: convolutions are unfold + matmul, dynamic convs loop over samples,
the local types build one kernel per output position."""
import torch
import torch.nn.functional as F


def unfold_patches(x, kernel_size, stride, padding, dilation, groups):
    """B x C x H x W -> patches B x g x (C/g*kh*kw) x L and the output size."""
    b, c, h, w = x.shape
    kh, kw = kernel_size
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return cols.view(b, groups, c // groups * kh * kw, ho * wo), (ho, wo)


def ref_conv(x, weight, bias, stride, padding, dilation, groups):
    """Plain convolution as unfold + matmul. weight: O x C/g x kh x kw."""
    cols, (ho, wo) = unfold_patches(x, weight.shape[-2:], stride, padding, dilation, groups)
    o = weight.shape[0]
    w = weight.reshape(groups, o // groups, -1)
    out = torch.einsum("gox,bgxl->bgol", w, cols).reshape(x.shape[0], o, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def ref_global_logits(x, fc1, fc2):
    pooled = x.mean((2, 3))
    hidden = torch.relu(pooled @ fc1.weight.T + fc1.bias)
    return hidden @ fc2.weight.T + fc2.bias


def ref_per_sample_mixture(m, x, mix):
    """Per-sample loop: conv(x_b, sum_k mix_bk W_k) + sum_k mix_bk b_k, for mixing weights B x K."""
    outs = []
    for b in range(x.shape[0]):
        kernel = sum(mix[b, k] * m.weight[k] for k in range(m.num_kernels))
        bias = None if m.bias is None else sum(mix[b, k] * m.bias[k] for k in range(m.num_kernels))
        outs.append(ref_conv(x[b:b + 1], kernel, bias, m.stride, m.padding, m.dilation, m.groups))
    return torch.cat(outs)


def ref_dynamic(m, x):
    """DyConv: pi = softmax(global logits / tau), then the per-sample mixture."""
    pi = torch.softmax(ref_global_logits(x, m.kernel_attention.fc1, m.kernel_attention.fc2)
                       / m.temperature, dim=1)
    return ref_per_sample_mixture(m, x, pi)


def ref_condconv(m, x):
    """CondConv from its formula: r = sigmoid(W_r GAP(x) + b_r), then the per-sample mixture."""
    pooled = x.sum((2, 3)) / (x.shape[2] * x.shape[3])
    r = 1 / (1 + torch.exp(-(pooled @ m.routing.weight.T + m.routing.bias)))
    return ref_per_sample_mixture(m, x, r)


def ref_odconv(m, x):
    """ODConv from its formula: h = ReLU(BN(W_fc GAP(x))) (batch statistics in training when B > 1,
    else the running ones), sigmoid heads alpha_c, alpha_f, alpha_s and a softmax alpha_w, all over tau;
    y_b = alpha_f * conv(alpha_c * x_b, sum_k alpha_wk (alpha_s * W_k)) (+ alpha_f sum_k alpha_wk b_k).
    A head the layer skips counts as ones."""
    a, tau = m.omni_attention, m.temperature
    b = x.shape[0]
    z = (x.sum((2, 3)) / (x.shape[2] * x.shape[3])) @ a.fc.weight.T
    if m.training and b > 1:
        mean, var = z.mean(0), ((z - z.mean(0)) ** 2).mean(0)
    else:
        mean, var = a.bn.running_mean, a.bn.running_var
    h = torch.relu((z - mean) / torch.sqrt(var + a.bn.eps) * a.bn.weight + a.bn.bias)

    def head(fc, size, squash):
        return torch.ones(b, size, dtype=x.dtype) if fc is None else squash((h @ fc.weight.T + fc.bias) / tau)

    sigmoid = lambda t: 1 / (1 + torch.exp(-t))  # noqa: E731
    kh, kw = m.kernel_size
    channel = head(a.channel_fc, m.in_channels, sigmoid)
    filt = head(a.filter_fc, m.out_channels, sigmoid)
    spatial = head(a.spatial_fc, kh * kw, sigmoid).view(b, kh, kw)
    kernel = head(a.kernel_fc, m.num_kernels, lambda t: torch.softmax(t, dim=1)) if m.num_kernels > 1 \
        else torch.ones(b, 1, dtype=x.dtype)
    outs = []
    for i in range(b):
        w = sum(kernel[i, k] * spatial[i] * m.weight[k] for k in range(m.num_kernels))
        bias = None if m.bias is None else sum(kernel[i, k] * m.bias[k] for k in range(m.num_kernels))
        y = ref_conv(x[i:i + 1] * channel[i].view(1, -1, 1, 1), w, bias, m.stride, m.padding, m.dilation, m.groups)
        outs.append(y * filt[i].view(1, -1, 1, 1))
    return torch.cat(outs)


def ref_local_attention(m, x, responses):
    """responses: list of K tensors B x O x H' x W' -> alpha B x K x H' x W'."""
    evidence = torch.cat([torch.stack([r.mean(1) for r in responses], 1),
                          torch.stack([r.amax(1) for r in responses], 1)], 1)
    conv, spatial = m.local_attention.conv, m.local_attention.spatial
    if spatial is None:  # one ka x ka conv, 2K -> K
        pad = conv.kernel_size[0] // 2
        logits = ref_conv(evidence, conv.weight, conv.bias, (1, 1), (pad, pad), (1, 1), 1)
    else:  # separable: 1x1 2K -> K, then ka x ka on each logit map
        pad = spatial.kernel_size[0] // 2
        logits = ref_conv(evidence, conv.weight, conv.bias, (1, 1), (0, 0), (1, 1), 1)
        logits = ref_conv(logits, spatial.weight, None, (1, 1), (pad, pad), (1, 1), m.num_kernels)
    if m.kernel_attention is not None:
        g = ref_global_logits(x, m.kernel_attention.fc1, m.kernel_attention.fc2)
        logits = logits + g[:, :, None, None]
    return torch.softmax(logits / m.temperature, dim=1)


def ref_per_position_conv(x, kernels, alpha, stride, padding, dilation, groups):
    """y(p) = (sum_k alpha_k(p) W_k) . patch(p): one kernel per output position.
    kernels: K x O x C/g x kh x kw; alpha: B x K x H' x W'."""
    k, o = kernels.shape[:2]
    cols, (ho, wo) = unfold_patches(x, kernels.shape[-2:], stride, padding, dilation, groups)
    w = kernels.reshape(k, groups, o // groups, -1)
    per_position = torch.einsum("bkl,kgox->bglox", alpha.flatten(2), w)
    out = torch.einsum("bglox,bgxl->bgol", per_position, cols)
    return out.reshape(x.shape[0], o, ho, wo)


def ref_a2d2c(m, x):
    args = (m.stride, m.padding, m.dilation, m.groups)
    responses = [ref_conv(x, m.weight[k], None, *args) for k in range(m.num_kernels)]
    alpha = ref_local_attention(m, x, responses)
    out = ref_per_position_conv(x, m.weight, alpha, *args)
    if m.bias is not None:
        out = out + torch.einsum("bkhw,ko->bohw", alpha, m.bias)
    return out


def ref_low_rank_kernel(up, down_k, groups):
    """U V_k for one expert, group by group. up: O x r/g x 1 x 1, down_k: r x C/g x kh x kw."""
    o, r = up.shape[0], down_k.shape[0]
    blocks = []
    for g in range(groups):
        u = up[g * o // groups:(g + 1) * o // groups, :, 0, 0]
        v = down_k[g * r // groups:(g + 1) * r // groups]
        blocks.append(torch.einsum("or,rchw->ochw", u, v))
    return torch.cat(blocks)


def ref_centre_tap_experts(m, x):
    """Depthwise A2D2C+: S_k[c](p) = v_k[c] * (the input the kernel's centre tap reads at p)."""
    kh, kw = m.kernel_size
    cols, (ho, wo) = unfold_patches(x, (kh, kw), m.stride, m.padding, m.dilation, m.groups)
    centre = cols[:, :, ((kh - 1) // 2) * kw + (kw - 1) // 2, :]  # B x C x L
    return [(m.down_weight[k, :, 0, 0, 0].view(1, -1, 1) * centre).view(x.shape[0], -1, ho, wo)
            for k in range(m.num_kernels)]


def ref_centre_tap_kernel(low_rank, kernel_size):
    """An O x 1 x 1 x 1 kernel placed at the centre tap of a zero kh x kw kernel."""
    kh, kw = kernel_size
    full = torch.zeros(low_rank.shape[0], 1, kh, kw, dtype=low_rank.dtype)
    full[:, :, (kh - 1) // 2, (kw - 1) // 2] = low_rank[:, :, 0, 0]
    return full


def ref_a2d2c_plus(m, x):
    args = (m.stride, m.padding, m.dilation, m.groups)
    depthwise = m.groups == m.in_channels > 1
    if depthwise:
        experts = ref_centre_tap_experts(m, x)
    else:
        experts = [ref_conv(x, m.down_weight[k], None, *args) for k in range(m.num_kernels)]
    alpha = ref_local_attention(m, x, experts)
    deltas = [ref_low_rank_kernel(m.up_weight, m.down_weight[k], m.groups)
              for k in range(m.num_kernels)]
    if depthwise:
        deltas = [ref_centre_tap_kernel(d, m.kernel_size) for d in deltas]
    kernels = torch.stack([m.weight + d for d in deltas])
    out = ref_per_position_conv(x, kernels, alpha, *args)
    if m.bias is not None:
        out = out + m.bias.view(1, -1, 1, 1)
    return out


def reference(m, x):
    """The naive reference for whichever layer ``create_conv2d`` built."""
    if hasattr(m, "down_weight"):
        return ref_a2d2c_plus(m, x)
    if hasattr(m, "local_attention"):
        return ref_a2d2c(m, x)
    if hasattr(m, "routing"):
        return ref_condconv(m, x)
    if hasattr(m, "omni_attention"):
        return ref_odconv(m, x)
    return ref_dynamic(m, x)
