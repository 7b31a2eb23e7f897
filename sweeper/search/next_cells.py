"""Which cells to run next: the transfer search's next round on the store's tables, as sweep commands.

The same strategy as ``python sweep.py -m ... search=transfer`` (sweeper.search.transfer), seeing each of
the report's tables (same groups, rows and optima as analysis.analysed.analyse) as the search
would on resuming from this store: rows settle size by size -- bracketed by worse or diverged
cells, on the line's edge, or by transfer where the budget says so -- and the first row that is not
settled yet gets the cells the search would run next, on the table's own lrs. Rows after it wait
for its optimum, which predicts where theirs lies. A row whose optimum sits on the line's edge is
settled as far as the line goes; its note says which way to extend the line.

A row's command is analysis.sweep_line's.
"""
from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import AnalysisError
from analysis.analysed import load
from analysis.optima import RowOptimum
from analysis.sweep_line import command, row_records, sweep_lookup
from analysis.tables import Table, build_tables, row_optima, value_text
from sweeper.grid.budget import BUDGET
from trainer.config import CONF_DIR

from .rounds import table_state
from .transfer import RowResult, step


@dataclass
class RowPlan:
    table: str
    title: dict
    axis: str
    size: float
    best_lr: float | None
    best_loss: float | None
    edge: str | None
    finished: list[float]  # lrs of the row's finished (ok or diverged) cells
    settled: str | None  # how the search settled the row (sweeper.search.transfer.RowResult.how); None: not yet
    suggested: list[float]
    argv: list[str] | None  # the sweep command, None when the row has nothing to run now
    note: str | None

    @property
    def command(self) -> str | None:
        return None if self.argv is None else shlex.join(self.argv)


@dataclass(frozen=True)
class NextOptions:
    store: Path
    experiment: str | None = None
    conf_dir: Path = CONF_DIR
    budget: float = BUDGET
    strict: bool = False  # an unreadable record is an error, not a warning


# ---- per row ------------------------------------------------------------------------------------

def _native(value):
    return value.item() if isinstance(value, np.generic) else value


def plan_row(table: Table, r: int, opt: RowOptimum, records: pd.DataFrame, settled: RowResult | None,
             wanted: list[float], options: NextOptions, defaults_of) -> RowPlan:
    """A row the search ``settled``, or one it wants cells for (``wanted``), or one that waits."""
    done = table.runs[r] > 0
    plan = RowPlan(table.name, {k: _native(v) for k, v in table.title.items()}, table.axis, float(table.sizes[r]),
                   opt.lr, opt.loss, opt.edge, [float(x) for x in table.lrs[done]], None, [], None, None)
    if settled is not None:
        plan.settled = settled.how
        plan.note = f"settled: {settled.how} by {settled.cells} cells"
        if settled.how == "edge":
            plan.note += f"; the optimum may lie {opt.edge} {opt.lr:g}: extend the line's lrs to look"
        return plan
    if not wanted:
        plan.note = "waits for the optimum of the row above, which predicts where this one lies"
        return plan
    plan.suggested = wanted
    if records.empty:  # only failed runs at this size: no finished cell to take its settings from
        plan.note = "its cells failed: rerun the sweep that made them (it retries failed cells)"
        return plan
    plan.argv = command(records, table, wanted, options.store, options.conf_dir, defaults_of)
    if set(records["source"]) == {"ingest"}:
        plan.note = ("ingested numbers carry no training setup: the new cells train with the settings "
                     "shown (add e.g. preset=paper) and form their own table")
    return plan


def plan_next(options: NextOptions) -> list[RowPlan]:
    if not 0 < options.budget <= 1:
        raise AnalysisError(f"--budget {options.budget:g}: give a fraction of the grid's compute in (0, 1]")
    if not (options.conf_dir / "sweep.yaml").is_file():
        raise AnalysisError(f"{options.conf_dir} holds no sweep.yaml: pass the sweep's config dir with --conf")
    frame = load(options.store, options.strict)
    if options.experiment is not None:
        named = sorted(str(e) for e in frame["experiment"].dropna().unique())
        frame = frame[frame["experiment"] == options.experiment]
        if frame.empty:
            raise AnalysisError(f"no records of experiment '{options.experiment}' in {options.store}; "
                                f"its experiments: {', '.join(named) or '(none named)'}")
    groups, defaults_of = sweep_lookup(frame, options.conf_dir)
    plans = []
    for table in build_tables(frame):  # the report's tables and optima (analysis.analysed.analyse)
        state = table_state(table)
        wanted = step(state, options.budget)  # settles rows up to the one that needs cells
        for r, opt in enumerate(row_optima(table)):
            records = row_records(frame, groups, table, table.sizes[r])
            settled = state.settled[r] if r < len(state.settled) else None
            plans.append(plan_row(table, r, opt, records, settled, wanted if r == state.row else [],
                                  options, defaults_of))
    return plans


# ---- output -------------------------------------------------------------------------------------

def to_text(plans: list[RowPlan], options: NextOptions) -> str:
    """Per table, a comment line per row and the command of the row the search is at: the output
    runs as a shell script."""
    lines = [f"# next cells: the transfer search's next round per table (budget {options.budget:g} of the "
             f"grid's compute), as `search=transfer` would run them on this store"]
    table = note = None
    for plan in plans:
        if plan.table != table:
            table, note = plan.table, None
            lines += ["", f"## {table}"]
        size = f"{plan.axis} {value_text(plan.size)}"
        best = "" if plan.best_lr is None else f"best {value_text(plan.best_lr)} (loss {plan.best_loss:.3f}); "
        if plan.note and (plan.settled or not plan.argv or plan.note != note):  # say a shared note once
            lines.append(f"# {size}: {best}{plan.note}")
        elif plan.argv:
            lines.append(f"# {size}: {best}next lr {', '.join(value_text(v) for v in plan.suggested)}")
        note = plan.note
        if plan.command:
            lines.append(plan.command)
    return "\n".join(_one_line(line) if line.startswith("#") else line for line in lines)


def _one_line(comment: str) -> str:
    """A comment stays one line whatever a name in it holds: a newline would start a command."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in comment)


def to_json(plans: list[RowPlan]) -> list[dict]:
    return [{**asdict(plan), "command": plan.command} for plan in plans]
