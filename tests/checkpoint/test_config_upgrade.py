"""A config saved before the restructure (issue 13) reads back as today's config for the same command:
moved task and logger classes, the task's aspect-ratio grouping, τ's schedule under the conv."""
import copy

import pytest
from omegaconf import OmegaConf

from a2d2c.checkpoint.config_upgrade import upgrade_config
from helpers.train_utils import compose_config

OLD_TARGETS = {"classification": "a2d2c.engine.classification.ClassificationTask",
               "detection": "a2d2c.engine.detection.DetectionTask"}

OLD_DEFAULT_SCHEDULE = {"start": 30.0, "end": 1.0, "epochs": None, "fraction": 0.5, "from_weights": True}


def as_saved_before(config: dict) -> dict:
    """Today's config in the layout a run of the previous package wrote into its checkpoints."""
    old = copy.deepcopy(config)
    kind = "detection" if old["task"]["_target_"].endswith("DetectionTask") else "classification"
    old["task"]["_target_"] = OLD_TARGETS[kind]
    old["task"].pop("aspect_ratio_group_factor", None)  # the Trainer read it from the dataset
    if old.get("logger"):
        old["logger"]["_target_"] = "a2d2c.utils.tracking.WandbLogger"
    schedule = old["conv"].pop("tau_schedule")
    # Every run had one, a static one too (it did nothing there): trainer/default.yaml's.
    old["trainer"]["temperature"] = schedule if schedule is not None else dict(OLD_DEFAULT_SCHEDULE)
    return old


@pytest.mark.parametrize("overrides", [(), ("dataset=coco",), ("dataset=shapes", "conv=static"),
                                       ("experiment=dyconv_imagenet_resnet18_dynamic",)])
@pytest.mark.parametrize("resolve", [True, False])
def test_an_old_saved_config_upgrades_to_todays_config_of_the_same_command(overrides, resolve):
    today = OmegaConf.to_container(compose_config(*overrides), resolve=resolve)
    old = as_saved_before(today)
    assert old != today
    assert upgrade_config(old, resolved=resolve) == today
