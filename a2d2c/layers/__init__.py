"""Conv types: static, dynamic (DyConv), a2d2c, a2d2c_plus, condconv (CondConv) and odconv (ODConv), built by
``create_conv2d``."""
from .a2d2c_conv import A2D2CConv2d
from .a2d2c_plus_conv import A2D2CPlusConv2d
from .cond_conv import CondConv2d
from .create_conv import CONV_TYPES, check_conv_options, check_conv_type, conv_options, create_conv2d
from .dynamic_conv import DynamicConv2d
from .kernel_attention import KernelAttention, LocalKernelAttention
from .mixture_conv import MixtureConv2d
from .od_conv import ODConv2d
from .omni_attention import OmniAttention
from .temperature import annealed_temperature, has_temperature, set_temperature

__all__ = [
    "CONV_TYPES", "create_conv2d", "conv_options", "check_conv_type", "check_conv_options", "set_temperature",
    "has_temperature", "annealed_temperature", "CondConv2d", "DynamicConv2d", "A2D2CConv2d", "A2D2CPlusConv2d", "MixtureConv2d",
    "ODConv2d", "OmniAttention",
    "KernelAttention", "LocalKernelAttention",
]
