#!/usr/bin/env python
"""Collect runs' results.json into a markdown table (ours next to the paper's) and an accuracy-vs-MAdds plot.

    python scripts/make_table.py multirun/2026-11-23/10-00-00                 # print the table
    python scripts/make_table.py reproduce/dyconv_imagenet --table dyconv_imagenet \\
        --out table.md --plot table.png

Rows are models (dataset × backbone × conv type, seeds averaged); columns are params, MAdds and
the best top-1 (classification) or AP (detection) of the run, with the paper's numbers beside them
when --table names a table that has them (a2d2c/reporting/paper_tables.py). The plot draws one line per
conv type through its backbones, as figure 1 of the DyConv paper.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from a2d2c.errors import ConfigError  # noqa: E402
from a2d2c.reporting.paper_tables import TABLES  # noqa: E402
from a2d2c.reporting.results_table import load_runs, markdown_table, plot_accuracy_vs_madds  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run or sweep directories (searched for results.json)")
    parser.add_argument("--table", choices=sorted(TABLES), help="put this table's paper numbers beside ours")
    parser.add_argument("--out", type=Path, help="write the markdown table here (it is printed either way)")
    parser.add_argument("--plot", type=Path, help="draw accuracy against MAdds into this PNG")
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
        plot_accuracy_vs_madds(rows, args.plot, title=title, reference=reference)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
