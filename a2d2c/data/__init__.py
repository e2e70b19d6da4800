"""Datasets (embedded and on-disk), their transforms, and the loaders the Trainer uses."""
from a2d2c.data.loader import build_eval_loader, build_train_loader

__all__ = ["build_train_loader", "build_eval_loader"]
