"""``create_conv2d``: one factory for every conv type, with nn.Conv2d's signature."""
from __future__ import annotations

import difflib
import inspect
from typing import Optional

import torch.nn as nn

from ..errors import ConfigError
from .a2d2c_conv import A2D2CConv2d
from .a2d2c_plus_conv import A2D2CPlusConv2d
from .cond_conv import CondConv2d
from .dynamic_conv import DynamicConv2d
from .functional import same_padding, to_2tuple
from .mixture_conv import IntOrPair
from .od_conv import ODConv2d

CONV_TYPES = ("static", "dynamic", "a2d2c", "a2d2c_plus", "condconv", "odconv")

_CONV_CLASSES = {
    "static": nn.Conv2d,
    "dynamic": DynamicConv2d,
    "a2d2c": A2D2CConv2d,
    "a2d2c_plus": A2D2CPlusConv2d,
    "condconv": CondConv2d,
    "odconv": ODConv2d,
}
_SIGNATURE_ARGS = {"self", "in_channels", "out_channels", "kernel_size", "stride", "padding",
                   "dilation", "groups", "bias"}


def conv_options(conv_type: str) -> tuple:
    """The keyword options a conv type accepts beyond nn.Conv2d's signature."""
    if conv_type == "static":
        return ()
    params = inspect.signature(_CONV_CLASSES[conv_type].__init__).parameters
    return tuple(p for p in params if p not in _SIGNATURE_ARGS)


def check_conv_type(conv_type: str) -> None:
    if conv_type not in CONV_TYPES:
        near = difflib.get_close_matches(str(conv_type), CONV_TYPES, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ValueError(f"unknown conv type '{conv_type}'; valid: {', '.join(CONV_TYPES)}{hint}")


def check_conv_options(conv_type: str, options: dict) -> None:
    """One clear ValueError for an option the conv type does not take."""
    valid = conv_options(conv_type)
    for name in options:
        if name not in valid:
            near = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            listed = ", ".join(valid) if valid else "none"
            raise ValueError(f"option '{name}' is not valid for conv type '{conv_type}'; "
                             f"valid options: {listed}{hint}")


def create_conv2d(conv_type: str, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                  stride: IntOrPair = 1, padding: Optional[IntOrPair] = None,
                  dilation: IntOrPair = 1, groups: int = 1, bias: bool = False,
                  **options) -> nn.Module:
    """Build a conv of type ``conv_type`` ('static', 'dynamic', 'a2d2c', 'a2d2c_plus',
    'condconv', 'odconv').

    ``padding=None`` is ``(k - 1) // 2 * dilation``. ``options`` are the type's own knobs
    (``conv_options(conv_type)`` lists them); an unknown one is an error, not ignored.
    """
    check_conv_type(conv_type)
    check_conv_options(conv_type, options)
    if padding is None:
        padding = same_padding(to_2tuple(kernel_size), to_2tuple(dilation))
    if in_channels % groups or out_channels % groups:
        # A ConfigError (a ValueError): reached from a config, it ends train.py with this one line.
        raise ConfigError(f"groups={groups} must divide in_channels={in_channels} and "
                          f"out_channels={out_channels}")
    args = (in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
    if conv_type == "static":
        return nn.Conv2d(*args)
    return _CONV_CLASSES[conv_type](*args, **options)
