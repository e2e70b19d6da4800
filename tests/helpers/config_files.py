"""What a config file itself sets, and whether a composed config still holds it (tests/cli/test_configs.py)."""
from pathlib import Path

from omegaconf import OmegaConf

_ABSENT = "<absent>"


def _leaves(node, prefix: str = "") -> dict:
    """{dotted key: value}; lists and empty nodes are values (an empty file has none)."""
    if isinstance(node, dict) and (node or not prefix):
        leaves = {}
        for key, value in node.items():
            leaves.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return leaves
    return {prefix: node}


def _package(path: Path) -> str:
    """Where a group file's keys land: its group, or the top level under `# @package _global_`."""
    header = path.read_text().split("\n", 1)[0]
    return "" if header.strip() == "# @package _global_" else path.parent.name


def own_values(path: Path) -> dict:
    """{key in the composed config: value} of what `path` sets itself, and of the @_global_ files its defaults
    list names by absolute path (a dataset's recipe). `defaults` and interpolations (another key's value) are
    left out."""
    path = Path(path)
    content = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    defaults = content.pop("defaults", None) or []
    prefix = _package(path)
    values = {f"{prefix}.{k}" if prefix else k: v for k, v in _leaves(content).items()
              if not (isinstance(v, str) and "${" in v)}
    config_dir = next(p for p in path.parents if (p / "train.yaml").is_file())
    for entry in defaults:
        if isinstance(entry, str) and entry.startswith("/") and entry.endswith("@_global_"):
            included = config_dir / f"{entry[1:-len('@_global_')]}.yaml"
            values = {**own_values(included), **values}  # this file's own values come after (`_self_` last)
    return values


def values_at(cfg, expected: dict) -> dict:
    """{key: (expected, found)} for every key of `expected` whose value the composed `cfg` does not hold."""
    composed = OmegaConf.to_container(cfg, resolve=False)
    wrong = {}
    for key, value in expected.items():
        found = composed
        for part in key.split("."):
            found = found.get(part, _ABSENT) if isinstance(found, dict) else _ABSENT
        if found != value:
            wrong[key] = (value, found)
    return wrong


def selected_groups(experiment_dir: Path, preset: str) -> dict:
    """{group: option} that a preset's defaults list selects, through the presets it includes (later ones win)."""
    chosen = {}
    for entry in OmegaConf.load(Path(experiment_dir) / f"{preset}.yaml").get("defaults", []):
        if isinstance(entry, str):  # another preset, merged before this one
            chosen.update(selected_groups(experiment_dir, entry))
        else:
            ((key, option),) = entry.items()
            chosen[key.replace("override", "").strip().lstrip("/")] = option
    return chosen
