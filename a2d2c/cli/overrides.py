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
    comma sweeps of config groups are checked here; anything else is left to Hydra.
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
        for choice in choices:
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
    keys, sweeps over a group and anything that does not compose are left to Hydra.
    """
    config_dir = Path(config_dir)
    args = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception:
        return
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
            if not isinstance(node, DictConfig):
                break  # a list, a value or null: not ours to judge
            if part not in node.keys():  # not `in node`: that is False for a key whose value is ??? (missing)
                where = ".".join(path)
                full = [f"{where}.{k}" if where else k for k in node.keys()]
                fail(f"unknown config key '{key}'{_did_you_mean('.'.join([*path, part]), full)}; "
                     f"keys under {where or 'the top level'}: {', '.join(str(k) for k in node.keys())} "
                     f"(add a new key with +{key}=...)")
            node, path = node._get_node(part), [*path, part]  # without resolving: ??? and ${...} stay unread


def group_sweep_runs(cfg):
    """In a sweep (`-m`), name each job's wandb run by its overrides and group the runs by the sweep dir.

    Names or groups set explicitly (logger.name / logger.group) are kept.
    """
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or cfg.get("logger") is None:
        return
    cfg.logger.group = cfg.logger.group or str(hydra_cfg.sweep.dir)
    cfg.logger.name = cfg.logger.name or f"{hydra_cfg.job.num}_{hydra_cfg.job.override_dirname}"
