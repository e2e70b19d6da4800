"""What the entry points share: user errors become one line on stderr and exit status 2."""
import sys
from contextlib import contextmanager
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

from a2d2c.utils.errors import find_config_error

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
                fail(f"unknown {group} '{choice}'; valid: {', '.join(valid)} (files in {config_dir / group}/)")
