"""The plan of a paper table: every run its sweeps make, with its model's params / MAdds beside the paper's.

No data and no GPU: each run's config is composed from the table's sweeps as `train.py -m`
composes it (Hydra's compose API; the comma lists expanded by Hydra's basic sweeper), its
model is built as the Trainer builds it (`instantiate(cfg.task).build_model()`) and counted with
`count_complexity` on `task.complexity_module(model)` at `task.input_size(cfg.dataset.image_size)`.
Datasets are never instantiated. Runs that differ only in their seed are one row.
"""
from __future__ import annotations

import json
from pathlib import Path

from a2d2c.errors import ConfigError
from a2d2c.reporting.paper_tables import paper_notes, paper_numbers
from a2d2c.reporting.results_table import _conv_rank, conv_kernels, human, paper_score

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_overrides(table, user_overrides=()) -> list:
    """The Hydra overrides of every run of `table`, in order, as `train.py -m` expands its sweeps.

    A user override whose key a sweep sets replaces the sweep's (as scripts/reproduce.py does);
    the others are added. Hydra's own keys (hydra.*, hydra/launcher=...) do not change a run's model.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    replaced = {override_key(o) for o in user_overrides}
    parser = OverridesParser.create()
    runs = []
    for sweep in table.sweeps:
        args = [o for o in (*[o for o in sweep if override_key(o) not in replaced], *user_overrides)
                if not override_key(o).startswith("hydra")]
        try:
            parsed = parser.parse_overrides(args)
            (batch,) = BasicSweeper.split_arguments(parsed, None)
        except Exception as e:  # Hydra's parse errors span several lines
            raise ConfigError(f"cannot expand the sweep {' '.join(args)}: {str(e).strip().splitlines()[0]}") from e
        runs.extend(batch)
    return runs


def compose_run(overrides, config_dir=CONFIG_DIR):
    """The config `train.py <overrides>` runs with (Hydra's compose API on configs/train.yaml)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"{' '.join(overrides)} does not compose: {str(e).strip().splitlines()[0]}") from e


def count_run(cfg) -> dict:
    """{"params", "macs", "metric"} of the run's model, built and counted as the Trainer does (a2d2c/engine/trainer.py)."""
    from hydra.utils import instantiate

    from a2d2c.config_checks import check_train_config
    from a2d2c.errors import find_config_error
    from a2d2c.models.complexity import count_complexity

    check_train_config(cfg)
    try:
        task = instantiate(cfg.task)
        model = task.build_model()
    except Exception as e:
        error = find_config_error(e)
        if error is None:
            raise
        raise error from e
    counts = count_complexity(task.complexity_module(model).eval(), task.input_size(cfg.dataset.image_size))
    return {**counts, "metric": task.primary_metric}


def run_key(cfg) -> dict:
    # K as results_table reads it from a finished run's config, so that plan rows and result rows key alike.
    return {"dataset": cfg.dataset.name, "backbone": cfg.backbone.name, "conv": cfg.conv.type,
            "num_kernels": conv_kernels(cfg.conv), "image_size": cfg.dataset.image_size,
            "num_classes": cfg.dataset.num_classes}


def relative(ours, paper):
    return None if not paper else (ours - paper) / paper


def plan_row(table, overrides) -> dict:
    """One run of `table`: its key, our params / MAdds, the paper's (or None) and the relative differences."""
    cfg = compose_run(overrides)
    row = run_key(cfg)
    try:
        row.update(count_run(cfg))
    except ConfigError as e:  # which of the table's runs it is
        raise ConfigError(f"run {' '.join(overrides)}: {e}") from e
    row["overrides"] = list(overrides)
    row["seeds"] = [cfg.seed]
    paper = paper_numbers(table, row)
    row["paper"] = paper
    row["relative"] = None if paper is None else {k: relative(row[k], paper.get(k)) for k in ("params", "macs")}
    row["notes"] = paper_notes(table, row) if paper is not None else []
    source, unverified = cfg.get("recipe", {}).get("source"), list(cfg.get("recipe", {}).get("unverified") or [])
    row["recipe"] = {"source": source, "unverified": unverified}
    if unverified:
        row["notes"].append(f"Recipe of {source}: {', '.join(unverified)} as recalled, not checked against it.")
    return row


def plan(table, user_overrides=()) -> list:
    """One row per (dataset, backbone, conv, num_kernels); runs that differ only in `seed` are built once."""
    rows, by_overrides = [], {}
    for overrides in run_overrides(table, user_overrides):
        model_overrides = tuple(o for o in overrides if override_key(o) != "seed")
        seed = next((o.split("=", 1)[1] for o in overrides if override_key(o) == "seed"), None)
        if model_overrides in by_overrides:  # another seed of a run already counted
            by_overrides[model_overrides]["seeds"].append(int(seed) if seed is not None else 0)
            continue
        row = plan_row(table, overrides)
        same = next((r for r in rows if all(r[k] == row[k] for k in
                                            ("dataset", "backbone", "conv", "num_kernels", "params", "macs"))), None)
        if same is not None:  # e.g. an experiment preset and a sweep that name the same model
            same["seeds"] += row["seeds"]
            by_overrides[model_overrides] = same
            continue
        rows.append(row)
        by_overrides[model_overrides] = row
    return sorted(rows, key=lambda r: (r["dataset"], r["backbone"], _conv_rank(r["conv"]), r["num_kernels"] or 0))


def _percent(x) -> str:
    return "" if x is None else f"{100 * x:+.1f}%"


def plan_markdown(rows) -> str:
    """The table the runs will fill: ours (counted now) beside the paper's, and how far apart they are."""
    metric = "top-1" if not rows or rows[0]["metric"] == "top1" else rows[0]["metric"]
    header = ["dataset", "model", "conv", "K", "params", "MAdds", metric, "runs", "paper params", "paper MAdds",
              f"paper {metric}", "Δ params", "Δ MAdds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for row in rows:
        paper, rel = row["paper"] or {}, row["relative"] or {}
        for note in row["notes"]:
            if note not in notes:
                notes.append(note)
        marks = "".join(f"[{i}]" for i in sorted(notes.index(note) + 1 for note in row["notes"]))
        cells = [row["dataset"], row["backbone"], row["conv"], str(row["num_kernels"] or ""), human(row["params"]),
                 human(row["macs"]), "(to run)", str(len(row["seeds"])), human(paper.get("params")),
                 human(paper.get("macs")), paper_score(paper.get("metric")),
                 _percent(rel.get("params")), _percent(rel.get("macs")) + (f" {marks}" if marks else "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"[{i}] {note}" for i, note in enumerate(notes, 1)] if notes else []
    return "\n".join(lines)


def write_plan(rows, out_dir, table_name: str) -> Path:
    path = Path(out_dir) / f"{table_name}_plan.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    return path


__all__ = ["compose_run", "count_run", "override_key", "plan", "plan_markdown", "plan_row", "run_overrides",
           "write_plan"]
