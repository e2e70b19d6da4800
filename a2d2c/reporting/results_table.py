"""Collect runs' results.json into a markdown table and an accuracy-vs-MAdds plot (DyConv's figure 1)."""
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from a2d2c.errors import ConfigError

CONV_ORDER = ("static", "dynamic", "a2d2c", "a2d2c_plus")
PRIMARY_METRICS = ("top1", "AP")  # classification, detection: the first one a run has is its metric


@dataclass
class Row:
    """One model (dataset × backbone × conv type): the mean over its runs (seeds)."""
    dataset: str
    backbone: str
    conv: str
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
        key = (cfg["dataset"]["name"], cfg["backbone"]["name"], cfg["conv"]["type"])
        row = rows.setdefault(key, Row(*key, params=results["params"], macs=results["macs"], metric=metric))
        row.values.append(value)
        row.run_dirs.append(str(file.parent))
    return sorted(rows.values(), key=lambda r: (r.dataset, r.backbone, _conv_rank(r.conv)))


def _conv_rank(conv: str) -> int:
    return CONV_ORDER.index(conv) if conv in CONV_ORDER else len(CONV_ORDER)


def human(n) -> str:
    if n is None:
        return ""
    return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.1f}M"


def markdown_table(rows, reference=None) -> str:
    """Rows are models; ours next to the paper's where `reference[(backbone, conv)]` has them.

    `reference` values are dicts with any of "params", "macs", "metric". Seeds are averaged
    (± is the sample standard deviation over them).
    """
    reference = reference or {}
    metric = rows[0].metric if rows else "top1"
    label = "top-1" if metric == "top1" else metric
    header = ["dataset", "model", "conv", "params", "MAdds", label, "runs"]
    if reference:
        header += ["paper params", "paper MAdds", f"paper {label}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        score = f"{row.mean:.2f}" + (f" ± {row.std:.2f}" if len(row.values) > 1 else "")
        cells = [row.dataset, row.backbone, row.conv, human(row.params), human(row.macs), score, str(len(row.values))]
        if reference:
            paper = reference.get((row.backbone, row.conv), {})
            cells += [human(paper.get("params")), human(paper.get("macs")),
                      "" if paper.get("metric") is None else f"{paper['metric']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_accuracy_vs_madds(rows, path, title=None, reference=None):
    """Accuracy against MAdds, one line per conv type through its backbones (as DyConv's figure 1).

    Paper numbers, where given, are drawn dashed in the same colour.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    convs = sorted({r.conv for r in rows}, key=_conv_rank)
    for i, conv in enumerate(convs):
        ours = sorted((r for r in rows if r.conv == conv), key=lambda r: r.macs)
        color = f"C{i}"
        ax.plot([r.macs / 1e6 for r in ours], [r.mean for r in ours], "o-", color=color, label=conv)
        for r in ours:
            ax.annotate(r.backbone, (r.macs / 1e6, r.mean), fontsize=7, textcoords="offset points", xytext=(3, 3))
        paper = sorted((v for (b, c), v in (reference or {}).items() if c == conv and v.get("metric") is not None
                        and v.get("macs")), key=lambda v: v["macs"])
        if paper:
            ax.plot([v["macs"] / 1e6 for v in paper], [v["metric"] for v in paper], "s--", color=color,
                    alpha=0.6, label=f"{conv} (paper)")
    metric = rows[0].metric if rows else "top1"
    ax.set_xlabel("MAdds (M)")
    ax.set_ylabel("top-1 accuracy (%)" if metric == "top1" else metric)
    if rows and max(r.macs for r in rows) / max(1, min(r.macs for r in rows)) > 20:
        ax.set_xscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["Row", "load_runs", "markdown_table", "plot_accuracy_vs_madds", "run_metric", "human"]
