"""a2d2c: a research training codebase for dynamic convolution (static, DyConv, A2D2C, A2D2C+)."""

__version__ = "0.1.0"
