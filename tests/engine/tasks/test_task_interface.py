"""The written Task interface (a2d2c/engine/tasks/base.py): both tasks implement it, and a config whose task
class lacks a member stops with one line before anything is trained."""
import pytest
from omegaconf import OmegaConf

from a2d2c.engine.build import build_task
from a2d2c.errors import ConfigError
from a2d2c.engine.tasks.base import Task
from helpers.train_utils import compose_config


@pytest.mark.parametrize("overrides", [(), ("dataset=shapes",)])
def test_each_configured_task_implements_the_interface(overrides):
    task = build_task(compose_config(*overrides))
    assert isinstance(task, Task)
    for member in ("primary_metric", "collate_fn", "build_model", "complexity_module", "input_size",
                   "build_train_loader", "move_batch", "batch_size", "training_step", "evaluate"):
        assert hasattr(task, member), member


class HalfATask:
    """Has a model and a loss, but no loader, no evaluation."""

    primary_metric = "top1"
    collate_fn = None

    def build_model(self):
        return None

    def training_step(self, model, batch):
        return None, {}


def test_a_task_class_without_the_interface_is_one_config_error():
    cfg = compose_config()
    cfg.task = OmegaConf.create({"_target_": f"{__name__}.HalfATask"})
    with pytest.raises(ConfigError, match="HalfATask, which lacks members of a2d2c.engine.tasks.base.Task"):
        build_task(cfg)
