"""A store's tables analysed: each table with its optima, verdict and noise model, and the sweep
lines that decide an undecided verdict or close open optima. What the report, the answer and the
search's next round (sweeper.search.next_cells) read."""
from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sweeper.store import Store

from . import AnalysisError
from .confidence import TableNoise
from .optima import MAX_TREND, RowOptimum, Suggestion, Verdict, verdict
from .sweep_line import command, row_records, sweep_lookup
from .tables import Table, build_tables, row_optima


@dataclass
class Analysed:
    table: Table
    optima: list[RowOptimum]
    verdict: Verdict
    noise: TableNoise


def load(store: Path, strict: bool = False) -> pd.DataFrame:
    """The store's records; an unreadable one is named on stderr and left out (``strict``: an error)."""
    try:
        records = Store(store)
        records.check_readable()
        frame = records.load(strict)
    except ValueError as err:  # the store's StoreError / SchemaError: corrupt or too new a record
        raise AnalysisError(str(err)) from None
    for path, reason in frame.attrs["skipped"]:
        print(f"warning: skipped {path}: {reason} (--strict makes this an error)", file=sys.stderr)
    if frame.empty:
        raise AnalysisError(f"store {store} holds no records yet")
    return frame


def analyse(frame: pd.DataFrame, max_trend: float = MAX_TREND) -> list[Analysed]:
    out = []
    for table in build_tables(frame):
        optima = row_optima(table)
        noise = TableNoise(table, optima)
        out.append(Analysed(table, optima, verdict(table.axis, table.lrs, table.loss, table.diverged, optima,
                                                    max_trend, noise), noise))
    return out


def decide_commands(analysed: list[Analysed], frame: pd.DataFrame, store: Path, conf_dir: Path) -> list[Analysed]:
    """Each undecided verdict with its suggestion as a sweep line, and each table with open optima with
    the sweep line that closes them: the rows' settings and lrs with new seeds (after the table's
    highest), or the lrs that close open optima or the one lr whose regret is unknown, with the rows'
    seeds."""
    groups, defaults_of = sweep_lookup(frame, conf_dir)

    def line(table: Table, suggestion: Suggestion) -> str:
        rows = [int((table.sizes == size).nonzero()[0][0]) for size in suggestion.sizes]
        records = pd.concat([row_records(frame, groups, table, size) for size in suggestion.sizes])
        if suggestion.lrs is not None:
            lrs, seeds = suggestion.lrs, None
        elif suggestion.lr is not None:
            lrs, seeds = [suggestion.lr], None
        else:
            lrs = table.lrs[(table.runs[rows] > 0).any(axis=0)].tolist()
            first = int(table.seeds.max()) + 1
            seeds = list(range(first, first + suggestion.more_seeds))
        return shlex.join(command(records, table, lrs, store, conf_dir, defaults_of, seeds))

    out = []
    for a in analysed:
        judged = a.verdict
        if judged.decide is not None:
            judged = dataclasses.replace(judged, command=line(a.table, judged.decide))
        if judged.close is not None:
            judged = dataclasses.replace(judged, close_command=line(a.table, judged.close))
        out.append(dataclasses.replace(a, verdict=judged))
    return out
