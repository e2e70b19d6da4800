"""Collect runs' results.json into a markdown table (the plot: a2d2c/reporting/accuracy_plot.py)."""
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from a2d2c.errors import ConfigError
from a2d2c.layers import CONV_TYPES as CONV_ORDER  # rows in the order the layers list the types
from a2d2c.reporting.paper_tables import reference_key

PRIMARY_METRICS = ("top1", "AP")  # classification, detection: the first one a run has is its metric


@dataclass
class Row:
    """One model (dataset × backbone × conv type × K): the mean over its runs (seeds)."""
    dataset: str
    backbone: str
    conv: str
    num_kernels: object  # K of a conv type that mixes kernels (int), None for a static conv
    params: int
    macs: int
    metric: str
    values: list = field(default_factory=list)
    run_dirs: list = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def label(self) -> str:
        """The conv with its K, e.g. "odconv ×4" (the plot's legend)."""
        return conv_label(self.conv, self.num_kernels)


def conv_kernels(conv_cfg) -> object:
    """K of a run's conv config (conv.options.num_kernels, saved in results.json's resolved config), or None:
    a static conv has no kernels to mix, whatever its options say."""
    if conv_cfg["type"] == "static":
        return None
    return (conv_cfg.get("options") or {}).get("num_kernels")


def conv_label(conv: str, num_kernels) -> str:
    return conv if num_kernels is None else f"{conv} ×{num_kernels}"


def run_metric(results: dict):
    """(name, value) of the run's primary metric at its best epoch, e.g. ("top1", 95.3)."""
    split = results["config"]["dataset"]["eval_split"]
    best = results.get("best") or {}
    for name in PRIMARY_METRICS:
        if f"{split}/{name}" in best:
            return name, best[f"{split}/{name}"]
    raise ConfigError(f"results.json has none of {', '.join(f'{split}/{m}' for m in PRIMARY_METRICS)} in 'best'")


def load_runs(paths) -> list:
    """Every results.json under `paths` (run or sweep directories, or results.json files), grouped into Rows."""
    files = []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(path.rglob("results.json")))
        else:
            raise ConfigError(f"no such run directory or results.json: {path}")
    rows = {}
    for file in files:
        results = json.loads(file.read_text())
        if "final" not in results:  # eval.py writes results.json too; those are not runs
            continue
        cfg = results["config"]
        metric, value = run_metric(results)
        # K is part of the model: ODConv 1x and 4x are two rows, not two seeds of one.
        key = (cfg["dataset"]["name"], cfg["backbone"]["name"], cfg["conv"]["type"], conv_kernels(cfg["conv"]))
        row = rows.setdefault(key, Row(*key, params=results["params"], macs=results["macs"], metric=metric))
        row.values.append(value)
        row.run_dirs.append(str(file.parent))
    return sorted(rows.values(), key=lambda r: (r.dataset, r.backbone, _conv_rank(r.conv), r.num_kernels or 0))


def _conv_rank(conv: str) -> int:
    return CONV_ORDER.index(conv) if conv in CONV_ORDER else len(CONV_ORDER)


def human(n) -> str:
    if n is None:
        return ""
    return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.1f}M"


def paper_score(x) -> str:
    """A paper's accuracy as it prints it (70.25, 72.7): rounding to one decimal would move 70.25 to 70.2."""
    return "" if x is None else str(round(x, 2))


def markdown_table(rows, reference=None) -> str:
    """Rows are models; ours next to the paper's where `reference[reference_key(backbone, conv, K)]` has them.

    `reference` values are dicts with any of "params", "macs", "metric". Seeds are averaged
    (± is the sample standard deviation over them).
    """
    reference = reference or {}
    metric = rows[0].metric if rows else "top1"
    label = "top-1" if metric == "top1" else metric
    header = ["dataset", "model", "conv", "K", "params", "MAdds", label, "runs"]
    if reference:
        header += ["paper params", "paper MAdds", f"paper {label}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        score = f"{row.mean:.2f}" + (f" ± {row.std:.2f}" if len(row.values) > 1 else "")
        cells = [row.dataset, row.backbone, row.conv, "" if row.num_kernels is None else str(row.num_kernels),
                 human(row.params), human(row.macs), score, str(len(row.values))]
        if reference:
            paper = reference.get(reference_key(row.backbone, row.conv, row.num_kernels), {})
            cells += [human(paper.get("params")), human(paper.get("macs")),
                      paper_score(paper.get("metric"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["Row", "conv_kernels", "conv_label", "load_runs", "markdown_table", "paper_score", "run_metric", "human"]
