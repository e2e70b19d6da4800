#!/usr/bin/env python
"""Reproduce a paper table: run (or submit) its sweeps, then collect them into a markdown table and a plot.

    python scripts/reproduce.py --table digits_demo                     # embedded data, CPU, minutes
    python scripts/reproduce.py --table dyconv_imagenet dataset.root=/data/imagenet --nproc 8
    python scripts/reproduce.py --table a2d2c_cifar100 dataset.root=/data/cifar --slurm \\
        hydra.launcher.partition=gpu hydra.launcher.account=myproj      # one SLURM job per run
    python scripts/reproduce.py --table a2d2c_imagenet --slurm --dry-run   # print the commands only
    python scripts/reproduce.py --list
    python scripts/reproduce.py --table dyconv_imagenet --plan        # no data, no GPU: the rows, ours vs the paper's
    python scripts/reproduce.py --table odconv_imagenet --plan        # ODConv 1x / 4x: K is part of a row
    python scripts/reproduce.py --table conv_types_cifar100 dataset.root=/data/cifar   # every conv type, one recipe

Each table (a2d2c/reporting/paper_tables.py) is one or more Hydra sweeps of train.py; extra arguments
are Hydra overrides added to every sweep. Runs land in <out>/sweep_<i>/<job>; the table is written
to <out>/<table>.md and the plot (accuracy vs MAdds and vs params) to <out>/<table>.png
(scripts/make_table.py redoes both any time). A row is a model: dataset, backbone, conv type and K.
--plan runs nothing: it composes every run, builds and counts its model (a2d2c/reporting/table_plan.py),
prints the table the runs will fill with the paper's numbers beside ours and writes <out>/<table>_plan.json.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from a2d2c.errors import ConfigError  # noqa: E402
from a2d2c.reporting.paper_tables import TABLES  # noqa: E402
from a2d2c.reporting.table_plan import override_key  # noqa: E402


def sweep_commands(table, out: Path, overrides, nproc: int = 1, slurm: bool = False) -> list:
    """One `train.py -m` command per sweep of the table.

    An override whose key the sweep already sets replaces the sweep's (e.g. `trainer.epochs=1`,
    or `backbone=resnet10` for a smaller table); the others are added to every run.
    """
    launcher = []
    if slurm:
        launcher = ["hydra/launcher=slurm_ddp", f"hydra.launcher.tasks_per_node={nproc}"] if nproc > 1 else ["hydra/launcher=slurm"]
    prefix = [sys.executable]
    if nproc > 1 and not slurm:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    replaced = {override_key(o) for o in overrides}
    commands = []
    for i, sweep in enumerate(table.sweeps):
        kept = [o for o in sweep if override_key(o) not in replaced]
        commands.append(prefix + [str(REPO / "train.py"), "-m", *kept, *launcher, *overrides,
                                  f"hydra.sweep.dir={out / f'sweep_{i}'}"])
    return commands


def plan(table, overrides, out: Path) -> int:
    """--plan: every run composed and its model counted, nothing trained, no data read."""
    from a2d2c.cli.overrides import check_group_choices, check_override_keys
    from a2d2c.reporting.table_plan import CONFIG_DIR, plan_markdown, write_plan
    from a2d2c.reporting.table_plan import plan as plan_rows

    check_group_choices(CONFIG_DIR, overrides)  # as train.py: a bad choice or key is one line
    check_override_keys(CONFIG_DIR, "train", overrides)
    try:
        rows = plan_rows(table, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(plan_markdown(rows))
    print(f"plan: {write_plan(rows, out, table.name)}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--table", help="which table to reproduce: " + ", ".join(sorted(TABLES)))
    parser.add_argument("--list", action="store_true", help="list the tables and their runs, then exit")
    parser.add_argument("--out", type=Path, help="where runs, table and plot go (default: reproduce/<table>)")
    parser.add_argument("--slurm", action="store_true", help="submit through hydra-submitit-launcher (hydra/launcher=slurm)")
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) per run: torchrun locally, tasks per node on SLURM")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    parser.add_argument("--plan", action="store_true",
                        help="run nothing: print the table's rows with our params/MAdds beside the paper's, "
                             "and write <out>/<table>_plan.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. dataset.root=/data/imagenet")
    args = parser.parse_args(argv)

    if args.list:
        for name, table in TABLES.items():
            print(f"{name} ({table.runs()} runs): {table.description}")
        return 0
    if args.table is None:
        parser.error("--table is required; valid: " + ", ".join(sorted(TABLES)))
    if args.table not in TABLES:
        print(f"error: unknown table {args.table!r}; valid: {', '.join(sorted(TABLES))}", file=sys.stderr)
        return 2
    table = TABLES[args.table]
    missing = [req for req in table.requires if not (REPO / "configs" / req).is_file()]
    if missing:
        print(f"error: table {table.name} needs configs/{', configs/'.join(missing)}, which this checkout does not have "
              f"(detection configs)", file=sys.stderr)
        return 2
    if args.plan:
        return plan(table, args.overrides, (args.out or REPO / "reproduce" / table.name).resolve())
    if table.needs_data and not args.dry_run and not any(o.startswith("dataset.root=") for o in args.overrides):
        print(f"error: table {table.name} trains on a dataset on disk; pass dataset.root=<its directory>", file=sys.stderr)
        return 2
    if args.nproc < 1:
        parser.error("--nproc must be at least 1")

    out = (args.out or REPO / "reproduce" / table.name).resolve()
    commands = sweep_commands(table, out, args.overrides, args.nproc, args.slurm)
    for command in commands:
        print(shlex.join(command), flush=True)
        if args.dry_run:
            continue
        if subprocess.run(command, cwd=REPO).returncode != 0:
            print(f"error: a run of table {table.name} failed; its log is under {out}", file=sys.stderr)
            return 1
    if args.dry_run:
        return 0
    make_table = [sys.executable, str(REPO / "scripts" / "make_table.py"), str(out), "--table", table.name,
                  "--out", str(out / f"{table.name}.md"), "--plot", str(out / f"{table.name}.png")]
    return subprocess.run(make_table, cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
