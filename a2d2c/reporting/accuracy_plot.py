"""The plot of a table: accuracy against MAdds (DyConv's figure 1) and against params, two panels of one PNG.

One figure rather than two files: the two costs of a conv type are read side by side (a dynamic conv
adds few MAdds but many params), and reproduce.py / make_table.py keep writing one <table>.png.
"""
from pathlib import Path

from a2d2c.reporting.results_table import _conv_rank, conv_label

# (x key of a row and of a paper entry, axis label): the panels, left to right.
PANELS = (("macs", "MAdds (M)"), ("params", "params (M)"))


def _series(rows) -> list:
    """(conv, K) of the rows, in table order: one line each, through its backbones."""
    return sorted({(r.conv, r.num_kernels) for r in rows}, key=lambda s: (_conv_rank(s[0]), s[1] or 0))


def accuracy_figure(rows, title=None, reference=None):
    """The matplotlib figure: one panel per PANELS entry, one line per (conv, K), paper numbers dashed
    in the same colour where `reference` (reference_key -> {"params", "macs", "metric"}) has them for the
    rows' backbones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(6.4 * len(PANELS), 4.8), sharey=True)
    metric = rows[0].metric if rows else "top1"
    backbones = {r.backbone for r in rows}  # the paper's points for the models of the table, not all of its own
    for ax, (x, xlabel) in zip(axes, PANELS):
        for i, (conv, k) in enumerate(_series(rows)):
            ours = sorted((r for r in rows if (r.conv, r.num_kernels) == (conv, k)), key=lambda r: getattr(r, x))
            color, label = f"C{i}", conv_label(conv, k)
            ax.plot([getattr(r, x) / 1e6 for r in ours], [r.mean for r in ours], "o-", color=color, label=label)
            for r in ours:
                ax.annotate(r.backbone, (getattr(r, x) / 1e6, r.mean), fontsize=7, textcoords="offset points",
                            xytext=(3, 3))
            paper = sorted((v for (b, c, pk), v in (reference or {}).items()
                            if b in backbones and (c, pk) == (conv, k) and v.get("metric") is not None and v.get(x)),
                           key=lambda v: v[x])
            if paper:
                ax.plot([v[x] / 1e6 for v in paper], [v["metric"] for v in paper], "s--", color=color, alpha=0.6,
                        label=f"{label} (paper)")
        ax.set_xlabel(xlabel)
        values = [getattr(r, x) for r in rows]
        if values and max(values) / max(1, min(values)) > 20:  # backbones an order of magnitude apart
            ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy (%)" if metric == "top1" else metric)
    axes[-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_accuracy(rows, path, title=None, reference=None) -> Path:
    """Write accuracy_figure(...) to the PNG `path`."""
    import matplotlib.pyplot as plt

    fig = accuracy_figure(rows, title, reference)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["PANELS", "accuracy_figure", "plot_accuracy"]
