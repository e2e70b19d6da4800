"""What the entry points share: user errors become one line on stderr and exit status 2."""
import difflib
import sys
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.types import RunMode
from omegaconf import DictConfig

from a2d2c.errors import find_config_error

USAGE_ERROR = 2

# configs/experiment/ presets, renamed to one scheme, <source>_<dataset>_<model>_<conv>: the old name of
# a preset is one line naming the new one (check_group_choices), not an unknown choice.
RENAMED_PRESETS = {
    "cifar100_resnet18_a2d2c": "ours_cifar100_resnet18_a2d2c",
    "cifar100_resnet18_a2d2c_plus": "ours_cifar100_resnet18_a2d2c_plus",
    "cifar100_resnet18_dynamic": "ours_cifar100_resnet18_dynamic",
    "cifar100_resnet18_static": "ours_cifar100_resnet18_static",
    "coco_fasterrcnn_r50_fpn_1x_a2d2c": "torchvision_coco_fasterrcnn_r50_fpn_1x_a2d2c",
    "coco_fasterrcnn_r50_fpn_1x_a2d2c_plus": "torchvision_coco_fasterrcnn_r50_fpn_1x_a2d2c_plus",
    "coco_fasterrcnn_r50_fpn_1x_dynamic": "torchvision_coco_fasterrcnn_r50_fpn_1x_dynamic",
    "coco_fasterrcnn_r50_fpn_1x_static": "torchvision_coco_fasterrcnn_r50_fpn_1x_static",
    "coco_retinanet_r50_fpn_1x": "torchvision_coco_retinanet_r50_fpn_1x_static",
    "dyconv_imagenet_mobilenetv2_x0_35": "dyconv_imagenet_mobilenetv2_x0_35_dynamic",
    "dyconv_imagenet_mobilenetv2_x0_5": "dyconv_imagenet_mobilenetv2_x0_5_dynamic",
    "dyconv_imagenet_mobilenetv2_x0_75": "dyconv_imagenet_mobilenetv2_x0_75_dynamic",
    "dyconv_imagenet_mobilenetv2_x1_0": "dyconv_imagenet_mobilenetv2_x1_0_dynamic",
    "dyconv_imagenet_mobilenetv3_small": "dyconv_imagenet_mobilenetv3_small_dynamic",
    "dyconv_imagenet_resnet10": "dyconv_imagenet_resnet10_dynamic",
    "dyconv_imagenet_resnet18": "dyconv_imagenet_resnet18_dynamic",
    "odconv_imagenet_mobilenetv2_x0_5": "odconv_imagenet_mobilenetv2_x0_5_dynamic",
    "odconv_imagenet_mobilenetv2_x0_75": "odconv_imagenet_mobilenetv2_x0_75_dynamic",
    "odconv_imagenet_mobilenetv2_x1_0": "odconv_imagenet_mobilenetv2_x1_0_dynamic",
    "odconv_imagenet_resnet18": "odconv_imagenet_resnet18_dynamic",
    "odconv_imagenet_resnet50": "odconv_imagenet_resnet50_dynamic",
}
RENAMED_CHOICES = {"experiment": RENAMED_PRESETS}
# Keys of configs/train.yaml that moved (and their subkeys with them): one line naming the new key.
# τ's schedule went to the conv group, since only a dynamic conv type has a τ.
MOVED_KEYS = {"trainer.temperature": "conv.tau_schedule"}
# Why a node is null, for the one line that refuses setting a key under it.
NULL_HINTS = {"conv.tau_schedule": " (a static conv has no τ; the schedule is for conv=dynamic, a2d2c or a2d2c_plus)"}


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


@contextmanager
def exit_on_config_error():
    """A ConfigError (also one wrapped by Hydra's instantiate) ends the run with its one-line message."""
    try:
        yield
    except Exception as e:
        error = find_config_error(e)
        if error is None:
            raise
        fail(str(error))


def check_group_choices(config_dir, argv):
    """Reject `backbone=resnet81`-style choices before Hydra does, with one line listing the valid options.

    Hydra's own message spans a dozen lines (search path included). Only plain choices and
    comma sweeps of config groups are checked here; anything else is left to Hydra. A preset's old
    name (RENAMED_PRESETS) names the new one.
    """
    config_dir = Path(config_dir)
    args = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception:
        return  # a syntax error: Hydra reports it
    for override in overrides:
        group = override.key_or_group
        if override.package is not None or not (config_dir / group).is_dir() or group.startswith("hydra"):
            continue
        choices = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]
        valid = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        renamed = RENAMED_CHOICES.get(group, {})
        for choice in choices:
            if choice in renamed and choice not in valid:
                fail(f"{group}={choice} was renamed to {renamed[choice]}")
            if choice not in valid and choice != "null":
                fail(f"unknown {group} '{choice}'{_did_you_mean(choice, valid)}; valid: {', '.join(valid)} "
                     f"(files in {config_dir / group}/)")


def _did_you_mean(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_override_keys(config_dir, config_name, argv):
    """Reject `trainer.epoch=3`-style typos in keys with one line suggesting the nearest key.

    The config is composed from the group choices of `argv` (so keys an experiment adds count),
    then each `key=value` override is looked up in it. Appends (`+key=`), deletions, Hydra's own
    keys, sweeps over a group and anything that does not compose are left to Hydra; a key that
    moved (MOVED_KEYS, train.py's config) is refused in any of these forms, naming the new key.
    """
    config_dir = Path(config_dir)
    args = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception:
        return
    if config_name == "train":
        for override, arg in zip(overrides, args):
            _refuse_moved_key(override.key_or_group, arg)
    group_choices, keys = [], []
    for override, arg in zip(overrides, args):
        name = override.key_or_group
        if name.startswith("hydra") or override.package is not None:
            continue
        if (config_dir / name).is_dir():
            if override.is_sweep_override():
                return  # which keys exist depends on the job; Hydra checks each one
            group_choices.append(arg)
        elif override.type == OverrideType.CHANGE:
            keys.append(name)
    if not keys:
        return
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=group_choices)
    except Exception:
        return  # Hydra reports composition problems itself
    for key in keys:
        node, path = cfg, []
        for part in key.split("."):
            if path and node._is_none():  # Hydra's own message would be several lines on "struct"
                where = ".".join(path)
                fail(f"{where} is null in this config, so {key} has nothing to set{NULL_HINTS.get(where, '')}")
            if not isinstance(node, DictConfig):
                break  # a list or a value: not ours to judge
            if part not in node.keys():  # not `in node`: that is False for a key whose value is ??? (missing)
                where = ".".join(path)
                full = [f"{where}.{k}" if where else k for k in node.keys()]
                fail(f"unknown config key '{key}'{_did_you_mean('.'.join([*path, part]), full)}; "
                     f"keys under {where or 'the top level'}: {', '.join(str(k) for k in node.keys())} "
                     f"(add a new key with +{key}=...)")
            node, path = node._get_node(part), [*path, part]  # without resolving: ??? and ${...} stay unread


def _refuse_moved_key(key: str, arg: str) -> None:
    """`trainer.temperature.epochs=10` (set, added or deleted) after the key moved: one line with the new key."""
    for old, new in MOVED_KEYS.items():
        if key == old or key.startswith(old + "."):
            moved = new + key[len(old):]
            sign, value = arg[:len(arg) - len(arg.lstrip("+~"))], arg.split("=", 1)[1]
            fail(f"{key} was moved to {moved} (configs/{new.split('.')[0]}/); use {sign}{moved}={value}")


def group_sweep_runs(cfg):
    """In a sweep (`-m`), name each job's wandb run by its overrides and group the runs by the sweep dir.

    Names or groups set explicitly (logger.name / logger.group) are kept.
    """
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or cfg.get("logger") is None:
        return
    cfg.logger.group = cfg.logger.group or str(hydra_cfg.sweep.dir)
    cfg.logger.name = cfg.logger.name or f"{hydra_cfg.job.num}_{hydra_cfg.job.override_dirname}"
