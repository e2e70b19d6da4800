#!/usr/bin/env python
"""Collect runs' results.json into a markdown table (ours next to the paper's) and a plot of accuracy vs MAdds and params.

    python scripts/make_table.py multirun/2026-11-23/10-00-00                 # print the table
    python scripts/make_table.py reproduce/dyconv_imagenet --table dyconv_imagenet \\
        --out table.md --plot table.png

Rows are models (dataset × backbone × conv type × K, seeds averaged; K is conv.options.num_kernels of the
run's saved config, so ODConv 1x and 4x are two rows); columns are params, MAdds and the best top-1
(classification) or AP (detection) of the run, with the paper's numbers beside them when --table names a
table that has them (a2d2c/reporting/paper_tables.py). The plot has two panels, accuracy against MAdds
(as figure 1 of the DyConv paper) and against params, each with one line per conv type (and K) through
its backbones.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from a2d2c.errors import ConfigError  # noqa: E402
from a2d2c.reporting.paper_tables import TABLES  # noqa: E402
from a2d2c.reporting.accuracy_plot import plot_accuracy  # noqa: E402
from a2d2c.reporting.results_table import load_runs, markdown_table  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run or sweep directories (searched for results.json)")
    parser.add_argument("--table", choices=sorted(TABLES), help="put this table's paper numbers beside ours")
    parser.add_argument("--out", type=Path, help="write the markdown table here (it is printed either way)")
    parser.add_argument("--plot", type=Path, help="draw accuracy against MAdds and against params (two panels) into this PNG")
    args = parser.parse_args(argv)

    try:
        rows = load_runs(args.runs)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: no results.json of a finished run under {', '.join(map(str, args.runs))}", file=sys.stderr)
        return 2
    reference = TABLES[args.table].reference if args.table else None
    text = markdown_table(rows, reference)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.plot:
        title = args.table or None
        plot_accuracy(rows, args.plot, title=title, reference=reference)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
