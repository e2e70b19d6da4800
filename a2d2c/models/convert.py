"""Conv-type injection: replace a model's ``nn.Conv2d`` modules by another conv type.

The replacement keeps every hyper-parameter of the original conv (channels, kernel, stride,
padding, dilation, groups, bias), so the network's shapes and receptive fields are unchanged and
only the operator differs. As in DyConv, the default converts every conv except the stem.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence

import torch
from torch import nn

from a2d2c.layers import (A2D2CPlusConv2d, CondConv2d, MixtureConv2d, ODConv2d, check_conv_options, check_conv_type,
                          create_conv2d)

__all__ = ["CONVERT_MODES", "convert_convs", "find_stem_conv", "inflate_conv", "init_conv_kernels"]

# Which nn.Conv2d modules are replaced: every one but the first ("stem"), every one, or none.
CONVERT_MODES = ("all_but_stem", "all", "none")


def find_stem_conv(model: nn.Module) -> str:
    """Qualified name of the stem: the first conv (static or converted) in module order."""
    stem = _static_convs(model)[1]
    if stem is None:
        raise ValueError(f"{type(model).__name__} has no conv, so it has no stem")
    return stem


@torch.no_grad()
def init_conv_kernels(conv: nn.Module) -> None:
    """Initialise a conv's kernels the way torchvision initialises its backbones' convs.

    Every torchvision backbone used here draws conv weights with kaiming_normal_
    (mode="fan_out", ReLU gain) and zeroes conv biases. Dynamic convs keep K kernels in one
    K x O x C/g x kh x kw tensor; torch's fan computation would treat K as the output dim and
    O as the input dim, so each kernel is initialised as its own 4-D tensor instead.
    A2D2C+ keeps its static kernel W_0 as a 4-D ``weight``; its low-rank experts and attention
    branch keep the initialisation their module gives them.
    """
    weight = conv.weight
    kernels = weight.unbind(0) if weight.dim() == 5 else (weight,)
    for kernel in kernels:
        nn.init.kaiming_normal_(kernel, mode="fan_out", nonlinearity="relu")
    if getattr(conv, "bias", None) is not None:
        nn.init.zeros_(conv.bias)


@torch.no_grad()
def inflate_conv(conv: nn.Module, static: nn.Conv2d) -> None:
    """Set a converted conv's kernels so that it computes ``static``'s function exactly.

    ``dynamic`` and ``a2d2c``: every one of
    the K kernels (and biases) is the static kernel (bias). Their attention weights sum to 1 at
    every sample / position, so Σ_k π_k W_k = W and the output is the static conv's, whatever
    the attention says. The attention branch keeps its own initialisation.

    ``condconv``: its sigmoid gates need not sum to 1, so its routing starts at zero (every
    gate 1/2) and each kernel at 2/K of the static one.

    ``odconv``: its channel, filter and spatial heads start at zero (each attention 1/2) and each
    kernel at 2^heads times the static one, so the product of the three halves and the mix give W.

    ``a2d2c_plus``: W_0 (and its bias) is the static kernel and the shared up-projection U is
    zero, so U Σ_k α_k (V_k ⋆ x) adds nothing at start (its depthwise form too: there U scales
    each channel). U = 0 rather than V_k = 0: with the
    experts V_k kept random the attention sees informative evidence, and the gradient reaching
    U (the upstream gradient times the mixed expert responses) is non-zero, so U leaves zero at
    the first step and the experts then get gradients too (as LoRA starts its B at zero).
    """
    if conv.weight.dim() == 5:  # K x O x C/g x kh x kw
        conv.weight.copy_(static.weight.unsqueeze(0).expand_as(conv.weight))
    else:
        conv.weight.copy_(static.weight)
    if conv.bias is not None:
        conv.bias.copy_(static.bias.expand_as(conv.bias))
    if isinstance(conv, A2D2CPlusConv2d):
        nn.init.zeros_(conv.up_weight)
    if isinstance(conv, CondConv2d):
        # Sigmoid gates do not sum to 1: zero routing makes every r_k = 1/2 for every input,
        # and W_k = 2 W / K (b_k = 2 b / K) makes sum_k r_k W_k = W.
        nn.init.zeros_(conv.routing.weight)
        nn.init.zeros_(conv.routing.bias)
        conv.weight.mul_(2 / conv.num_kernels)
        if conv.bias is not None:
            conv.bias.mul_(2 / conv.num_kernels)
    if isinstance(conv, ODConv2d):
        # The sigmoid heads (channel, filter, spatial) with zero weights give 1/2 for every input;
        # the kernel softmax sums to 1. W_k = 2^heads W makes alpha_f alpha_c alpha_s sum_k alpha_wk W_k = W,
        # and the bias, which only the filter attention scales, is 2 b where there is one.
        heads = conv.omni_attention.heads()
        for fc in heads:
            nn.init.zeros_(fc.weight)
            nn.init.zeros_(fc.bias)
        conv.weight.mul_(2.0 ** len(heads))
        if conv.bias is not None and conv.omni_attention.filter_fc is not None:
            conv.bias.mul_(2.0)


def _excluded(name: str, patterns: Sequence[str]) -> bool:
    # A pattern excludes a conv when it matches the conv's name or the name of a module that
    # contains it, so "layer4" excludes every conv inside layer4 and "layer4.*.downsample.*"
    # only the downsample convs.
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(prefix, pat) for prefix in prefixes for pat in patterns)


def _check_exclude(model: nn.Module, patterns: Sequence[str]) -> None:
    # A pattern matching no module is almost always a typo that would silently convert a layer
    # the user meant to keep static, so it is an error.
    names = [name for name, _ in model.named_modules() if name]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            examples = ", ".join(names[:6])
            raise ValueError(
                f"exclude pattern {pattern!r} matches no module of {type(model).__name__} "
                f"(module names look like: {examples}, ...)"
            )


def _conv_kwargs(name: str, conv: nn.Conv2d) -> dict:
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ValueError(
            f"cannot convert conv {name!r}: padding={conv.padding!r}, "
            f"padding_mode={conv.padding_mode!r}; only numeric zero padding is supported"
        )
    return dict(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )


def _static_convs(model: nn.Module) -> tuple[list[tuple[str, nn.Conv2d]], str | None]:
    """The model's ``nn.Conv2d`` modules in module order, and the name of its stem conv.

    The stem is the first conv of either kind, so converting an already converted model
    still recognises it. Dynamic conv modules may hold plain ``nn.Conv2d`` parts (an attention
    conv, a projection); those belong to the operator and are never converted themselves.
    """
    convs, stem, converted = [], None, []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in converted):
            continue
        if isinstance(module, MixtureConv2d):
            converted.append(name + ".")
        elif isinstance(module, nn.Conv2d):
            convs.append((name, module))
        else:
            continue
        stem = name if stem is None else stem
    return convs, stem


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def convert_convs(
    model: nn.Module,
    conv_type: str,
    *,
    convert: str = "all_but_stem",
    exclude: Iterable[str] = (),
    inflate: bool = False,
    **conv_options,
) -> nn.Module:
    """Replace ``model``'s ``nn.Conv2d`` modules by ``conv_type`` convs, in place; return it.

    Args:
        model: a model built from ``nn.Conv2d`` (e.g. a torchvision backbone).
        conv_type: one of ``a2d2c.layers.CONV_TYPES``; "static" leaves the model untouched.
        convert: "all_but_stem" (DyConv's choice: every conv but the first), "all" or "none".
        exclude: fnmatch patterns on module names; matching convs, and convs inside matching
            modules, stay ``nn.Conv2d`` (e.g. ``["layer4.*.downsample.*"]``).
        **conv_options: options of the conv type (num_kernels, reduction, temperature, ...),
            passed to ``create_conv2d``.
        inflate: start each converted conv from the static conv it replaces, computing the same
            function (see ``inflate_conv``), instead of redrawing its kernels.

    New convs get torchvision's kernel initialisation (see ``init_conv_kernels``), or the
    static conv's kernels with ``inflate``, and the original conv's device, dtype and
    train/eval mode.
    """
    check_conv_type(conv_type)
    # Checked up front, so that a misspelt option fails even where no conv gets converted.
    check_conv_options(conv_type, conv_options)
    if convert not in CONVERT_MODES:
        raise ValueError(f"unknown convert mode {convert!r}; valid: {', '.join(CONVERT_MODES)}")
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    _check_exclude(model, exclude)
    if conv_type == "static" or convert == "none":
        return model

    convs, stem = _static_convs(model)
    for name, conv in convs:
        if (convert == "all_but_stem" and name == stem) or _excluded(name, exclude):
            continue
        new_conv = create_conv2d(conv_type, **_conv_kwargs(name, conv), **conv_options)
        if not inflate:
            init_conv_kernels(new_conv)
        new_conv.to(device=conv.weight.device, dtype=conv.weight.dtype)
        if inflate:
            inflate_conv(new_conv, conv)
        new_conv.train(conv.training)
        _set_submodule(model, name, new_conv)
    return model
