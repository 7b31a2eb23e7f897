"""python -m analysis {answer,report,ingest,curves,next}: the analysis stage's command line."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sweeper.grid.budget import BUDGET
from sweeper.store import STORE_ERROR
from trainer.config import CONF_DIR

from . import AnalysisError
from .optima import MAX_TREND

DESCRIPTION = """Turns a result store into the paper's tables, optimal learning rates, transfer verdicts
and figures, and brings external results (e.g. published tables) into a store."""

REPORT_EPILOG = """Tables: one per experiment group (every config setting that varies across the store, except
width/depth, lr and seed) and sweep line; rows are sizes, columns log2 eta_base, cells the final
validation loss averaged over seeds, '± sd' over them where a cell has several, the seed count in
brackets where cells differ in it (NaN: diverged, blank: not run, bold: the row's best).
eta* grid is the row's argmin, eta* fit the vertex of a parabola through it and its neighbours,
eta* 90% its interval: from the spread of per-seed fits pooled over the rows where seeds allow,
else from the scatter of eta* about its fitted trend (one seed); '<= x' / '>= x' marks an open
optimum (on the grid's edge, or against a diverged cell: stability-bounded), whose interval is
one-sided and which decides nothing; regret is the loss at the smallest size's eta* grid above the
row's fitted minimum. The verdict is decided on the trend of eta* per doubling of size (the
least-squares slope over the closed rows): 'transfers' when its 90% interval lies within
+-(--max-trend) and every row is closed, 'does not transfer' when it lies beyond (or the smallest
size's eta* diverges at a larger size), else 'undecided', with the sweep line to run next (more
seeds, or the cells that close open optima). drift (max - min of eta*) is descriptive.
docs/statistics.md states the noise models. summary.csv holds every bound.
Coordinate checks: files from `python -m trainer.coord_check --out FILE`, given with
--coord-check or named coord_check*.json inside the store directory.

example: python -m analysis report --store store/ --out reports/width --curves 3fa1c0d2e4b5a697"""


def _usable_cpus() -> int:
    # The affinity mask, not cpu_count: under Slurm or taskset a process may use fewer CPUs.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _verdict_options(command: argparse.ArgumentParser) -> None:
    """The options of the commands that decide verdicts (answer, report)."""
    command.add_argument("--max-trend", type=float, default=MAX_TREND, metavar="LOG2",
                         help="largest trend of eta* (log2 per doubling of size) that still transfers "
                              "(default %(default)s)")
    command.add_argument("--strict", action="store_true",
                         help="an unreadable record is an error (default: named on stderr and left out)")
    command.add_argument("--conf", type=Path, default=CONF_DIR, metavar="DIR",
                         help="the sweep's config dir, for the sweep line that decides an undecided verdict "
                              "(default: %(default)s)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{answer,report,ingest,curves,next}")

    answer = commands.add_parser(
        "answer", help="the answer only: per table, its verdict and the base learning rate to use",
        description="Prints the opening lines of the store's report: per table the verdict (transfers / "
        "does not transfer / undecided), the eta_base to use with its 90%% interval (as log2 and as eta), "
        "for a table that does not transfer the eta* of each size and the trend per doubling, for an "
        "undecided one the sweep line that would decide it. It only reads the store; `report` writes the "
        "tables that back it.")
    answer.add_argument("--store", type=Path, required=True, metavar="DIR", help="the result store directory")
    _verdict_options(answer)

    report = commands.add_parser(
        "report", help="tables, optima, verdicts and figures of a store", description="Writes the report of "
        "the store into --out (report.md, tables.tex, summary.csv,\ntables/<table>.{md,tex,csv}, "
        "figures/*.{png,pdf}) and prints its tables. It only reads the store.", epilog=REPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("--store", type=Path, required=True, metavar="DIR", help="the result store directory")
    report.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="directory for the report (created; an earlier report there is replaced)")
    report.add_argument("--force", action="store_true",
                        help="write into a --out that holds other files and no report")
    report.add_argument("--coord-check", type=Path, action="append", default=[], metavar="FILE",
                        help="coordinate-check records to plot (repeatable)")
    report.add_argument("--curves", action="append", default=[], metavar="KEY",
                        help="plot the training curves of this cell (repeatable)")
    report.add_argument("--no-figures", dest="figures", action="store_false", help="tables only (no figures at all, so --curves and --coord-check are ignored)")
    report.add_argument("--jobs", type=int, default=_usable_cpus(), metavar="N",
                        help="processes drawing figures (default: the CPUs this process may use, %(default)s)")
    _verdict_options(report)

    ingest = commands.add_parser(
        "ingest", help="bring external results (a CSV) into a store",
        description="Checks every row of CSV, then writes one record per row into the store (source "
        "'ingest'). Columns: width, depth, lr (log2 eta_base), param (sp|mup|mup_k1), optimizer "
        "(muon_kimi|muon|adamw|sgd|lion), layernorm (true|false), val_loss (nan: diverged); optional: "
        "val_loss_se (its standard error, for the intervals), and a column named like another trainer "
        "setting (seed: one row per seed, steps, batch_size, ...) gives it; other columns are kept as "
        "extra fields. Settings no column gives come from --experiment's config, else are unknown. A bad row stops it before anything is written. The records' "
        "keys include source and experiment, so they never replace a trained cell.")
    ingest.add_argument("csv", type=Path, metavar="CSV", help="the CSV file")
    ingest.add_argument("--store", type=Path, required=True, metavar="DIR", help="the result store directory (created)")
    ingest.add_argument("--experiment", help="experiment name of the records (default: the CSV's file stem); "
                        "when conf/experiment/NAME.yaml exists, settings no column gives come from it")
    ingest.add_argument("--conf", type=Path, default=CONF_DIR, metavar="DIR",
                        help="the sweep's config dir, for --experiment's settings (default: %(default)s)")

    curves = commands.add_parser("curves", help="training curves of one cell",
                                 description="Plots the train and val loss curves of one cell.")
    curves.add_argument("--store", type=Path, required=True, metavar="DIR", help="the result store directory")
    curves.add_argument("--key", required=True, help="the cell's key (column `key` of the store)")
    curves.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="report directory: writes figures/curves_KEY.{png,pdf} there")

    nxt = commands.add_parser(
        "next", help="which cells to run next: the transfer search's next round, as sweep commands",
        description="The transfer search of `sweep.py ... search=transfer` (sweeper.search.transfer) on every "
        "table of the report: how each row settled (bracketed by worse or diverged cells, on the line's "
        "edge, or by transfer), and for the first row that is not settled the learning rates the search "
        "would run next, as a `python sweep.py -m ...` line (the output runs as a shell script).")
    nxt.add_argument("--store", type=Path, required=True, metavar="DIR", help="the result store directory")
    nxt.add_argument("--experiment", metavar="NAME", help="only the records of this experiment")
    nxt.add_argument("--budget", type=float, default=BUDGET, metavar="FRACTION",
                     help="the search's compute budget, as search_budget (default %(default)s)")
    nxt.add_argument("--conf", type=Path, default=CONF_DIR, metavar="DIR",
                     help="the sweep's config dir, for the experiments' settings (default: %(default)s)")
    nxt.add_argument("--json", action="store_true", help="print the rows' plans as JSON")
    nxt.add_argument("--strict", action="store_true",
                     help="an unreadable record is an error (default: named on stderr and left out)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "ingest":  # ingest makes its store; every other command reads one
        from sweeper.store import Store, StoreError

        try:
            Store(args.store).check_readable()
        except StoreError as err:
            print(f"error: {err}", file=sys.stderr)
            return STORE_ERROR
    # Imported after parsing, per command: --help and ingest need no matplotlib.
    try:
        if args.command == "answer":
            from .report import answer

            print(answer(args.store, args.max_trend, args.strict, args.conf), end="")
        elif args.command == "report":
            from .report import ReportOptions, report

            print(report(ReportOptions(args.store, args.out, args.coord_check, args.curves, args.figures,
                                       args.jobs, args.max_trend, strict=args.strict,
                                       conf_dir=args.conf, force=args.force)))
        elif args.command == "ingest":
            from .ingest import ingest

            records = ingest(args.csv, args.store, args.experiment, args.conf)
            diverged = sum(r["status"] == "diverged" for r in records)
            print(f"ingested {len(records)} records ({diverged} diverged) as experiment "
                  f"'{records[0]['experiment']}' into {args.store}")
        elif args.command == "next":
            from sweeper.search.next_cells import (
                NextOptions,
                plan_next,
                to_json,
                to_text,
            )

            options = NextOptions(args.store, args.experiment, args.conf, args.budget, args.strict)
            plans = plan_next(options)
            print(json.dumps(to_json(plans), indent=1) if args.json else to_text(plans, options))
        else:
            from .figures import render
            from .report import curves_job

            print("wrote " + ", ".join(map(str, render([curves_job(args.store, args.key, args.out)]))))
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from sweeper.jobs.console import run_piped

    sys.exit(run_piped(main, sys.argv[1:]))
