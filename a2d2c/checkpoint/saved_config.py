"""A config read back from a file (a checkpoint's) is data: it never decides which code runs.

Hydra's `instantiate` calls whatever `_target_` a config names, so a checkpoint whose saved config
names `os.system` (or `builtins.list` around a chain of calls) would run code in `eval.py`. Before
anything saved is instantiated, every Hydra special key in it (`_target_`, `_args_`, `_partial_`,
...) must be one that the project's own config tree sets at that same key path; anything else is
refused with one line naming the key. The check runs on the *resolved* config, so an interpolation
cannot build a node (`${oc.decode:...}`) after the check, and a string still holding `${` after
resolution is refused too, since instantiating would resolve it again.

The checksum a checkpoint carries is for integrity (a damaged or truncated file), not
authenticity: anyone can recompute it, so it proves nothing about who wrote the file.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

from omegaconf import OmegaConf

from a2d2c.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# Hydra's keys that change what instantiate does; `_args_` and an unknown `_target_` are how a
# config runs code of its own choosing.
SPECIAL_KEYS = frozenset({"_target_", "_args_", "_partial_", "_convert_", "_recursive_"})
PACKAGE_HEADER = re.compile(r"#\s*@package\s+(\S+)")


class UnsafeConfigError(ConfigError):
    """A saved config that would make instantiate run something the project's configs never name."""


def _package_prefix(path: Path, config_dir: Path) -> str:
    """Where a config file's keys land in the composed config: its `# @package` header, else its group."""
    group = ".".join(path.relative_to(config_dir).parent.parts)
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        match = PACKAGE_HEADER.match(line)
        if match:
            package = match.group(1)
            return "" if package == "_global_" else group if package == "_group_" else package
    return group


def _special_entries(node, prefix: str):
    """(key path, special key, value) of every special key under `node`, lists included."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in SPECIAL_KEYS:
                yield prefix, key, value
            else:
                yield from _special_entries(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _special_entries(value, f"{prefix}.{i}" if prefix else str(i))


@functools.lru_cache(maxsize=None)
def project_special_entries(config_dir: Path = CONFIG_DIR) -> frozenset:
    """Every (key path, special key, value) that some file of the project's config tree sets.

    Read from the YAML files themselves (no composition, milliseconds); `hydra/` is left out, since a
    run's saved config has no `hydra` node. tests/checkpoint/test_safe_loading.py checks the paths against real
    compositions of every group option and experiment.
    """
    entries = set()
    for path in sorted(Path(config_dir).rglob("*.yaml")):
        if path.relative_to(config_dir).parts[0] == "hydra":
            continue
        content = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        entries.update((p, k, v) for p, k, v in _special_entries(content, _package_prefix(path, config_dir))
                       if isinstance(v, (str, bool, int, float)))  # hashable; anything else cannot be ours
    return frozenset(entries)


def check_saved_config(config: dict, source) -> None:
    """Refuse, with one line naming the key, a resolved config that instantiates what the project does not."""
    allowed = project_special_entries()
    for path, key, value in _special_entries(config, ""):
        where = f"{path}.{key}" if path else key
        if not isinstance(value, (str, bool, int, float)) or (path, key, value) not in allowed:
            raise UnsafeConfigError(f"refusing {source}: its saved config sets {where}={value!r}, which no file of "
                                    f"a2d2c's configs/ sets there; a saved config may only name the project's own "
                                    f"components (the file was altered or comes from elsewhere)")
    _refuse_interpolations(config, "", source)


def _refuse_interpolations(node, path: str, source):
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_interpolations(value, f"{path}.{key}" if path else str(key), source)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_interpolations(value, f"{path}.{i}", source)
    elif isinstance(node, str) and "${" in node:
        raise UnsafeConfigError(f"refusing {source}: its saved config holds {path}={node!r}, an interpolation left "
                                f"after resolving; a2d2c configs resolve to plain values (the file was altered)")


def load_saved_config(saved: dict, source, overrides: dict | None = None):
    """The saved config as a checked DictConfig, ready to instantiate.

    `overrides` ({"dataset": {"root": ...}}) are merged into the unresolved config first, so values
    derived from them by interpolation follow. The result holds plain values only.
    """
    if not isinstance(saved, dict):
        raise UnsafeConfigError(f"refusing {source}: its saved config is a {type(saved).__name__}, not a mapping")
    try:
        cfg = OmegaConf.create(saved)
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(overrides))
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # a malformed or crafted config: bad keys, unknown resolvers, cycles
        raise UnsafeConfigError(f"cannot read the config saved in {source}: {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}") from e
    check_saved_config(resolved, source)
    return OmegaConf.create(resolved)
