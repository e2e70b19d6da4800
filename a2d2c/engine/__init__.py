"""The training loop (Trainer), the tasks it runs, and checkpoint evaluation."""
from a2d2c.engine.classification import ClassificationTask
from a2d2c.engine.trainer import Trainer

__all__ = ["Trainer", "ClassificationTask"]
