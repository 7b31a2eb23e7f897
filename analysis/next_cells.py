"""Which cells to run next: the transfer search's next round on the store's tables, as sweep commands.

The same strategy as ``python sweep.py -m ... search=transfer`` (sweeper.transfer), seeing each of
the report's tables (same groups, rows and optima as analysis.report.analyse) as the search
would on resuming from this store: rows settle size by size -- bracketed by worse or diverged
cells, on the line's edge, or by transfer where the budget says so -- and the first row that is not
settled yet gets the cells the search would run next, on the table's own lrs. Rows after it wait
for its optimum, which predicts where theirs lies. A row whose optimum sits on the line's edge is
settled as far as the line goes; its note says which way to extend the line.

The command of a row repeats every result setting of its cells that the sweep would not pick by
itself: those differing from the composed sweep config (conf/sweep.yaml plus the records'
experiment, when conf/experiment/ has it), plus the size axes, the group's settings, and the keys the
experiment sweeps by default (command-line values replace them).
"""
from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from sweeper.argv import hydra_quote
from sweeper.experiments import CONF_DIR, compose_sweep, has_experiment, sweep_settings
from sweeper.record import result_config
from sweeper.search import table_state
from sweeper.transfer import BUDGET, RowResult, step

from . import AnalysisError
from .optima import RowOptimum
from .tables import LR, SEED, SIZE_AXES, Table, build_tables, group_columns, row_optima, value_text

if TYPE_CHECKING:
    from omegaconf import DictConfig



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
    settled: str | None  # how the search settled the row (sweeper.transfer.RowResult.how); None: not yet
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


# ---- the command line ---------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z_./][\w./-]*")


def override_value(value) -> str:
    """A setting as Hydra reads it back: true/false, a number, or a string (quoted where needed)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return value_text(value) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):  # model_args, model_roles: Hydra's {key: value}
        return "{" + ",".join(f"{key}:{override_value(v)}" for key, v in value.items()) + "}"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in ("true", "false", "null", "nan", "inf"):
        return text
    return hydra_quote(text)


def compose(experiment: str | None, conf_dir: Path) -> DictConfig:
    """The sweep config (with ``experiment=``, when given) as sweeper.experiments.compose_sweep
    composes it; Hydra's errors become an AnalysisError that says to pass --conf."""
    from hydra.errors import HydraException

    try:
        return compose_sweep(experiment, conf_dir)
    except HydraException as err:
        raise AnalysisError(f"cannot compose the sweep config {f'experiment={experiment}' if experiment else ''} "
                            f"from {conf_dir}: {str(err).splitlines()[0]} Pass the sweep's config dir with --conf.") from None


def sweep_defaults(experiment: str | None, conf_dir: Path) -> tuple[dict, set[str]]:
    """Result settings a sweep gets without overrides (with ``experiment=``, when given), and the keys
    the experiment's default grid sweeps."""
    cfg = compose(experiment, conf_dir)
    swept = set(cfg.hydra.sweeper.params or {})
    return result_config(sweep_settings(cfg)), swept


def sweep_lookup(frame: pd.DataFrame, conf_dir: Path) -> tuple[list[str], Callable]:
    """The group columns of ``frame`` as build_tables groups them, and sweep_defaults per experiment,
    composed once each: what row_records and command need."""
    groups = group_columns(frame[frame[LR].notna()])
    cache: dict = {}

    def defaults_of(experiment):
        if experiment not in cache:
            cache[experiment] = sweep_defaults(experiment, conf_dir)
        return cache[experiment]

    return groups, defaults_of


def known_experiment(experiment, conf_dir: Path) -> str | None:
    """The records' experiment when the sweep has a config of that name (ingested ones have none)."""
    return experiment if has_experiment(experiment, conf_dir) else None


def row_records(frame: pd.DataFrame, groups: list[str], table: Table, size: float) -> pd.DataFrame:
    """The finished records behind one table row: its title's values, its size, and the group
    columns its title leaves out being missing there too."""
    mask = (frame[table.axis] == size) & frame["status"].isin(("ok", "diverged"))
    for column, value in table.title.items():
        mask &= frame[column] == value
    for column in groups:
        if column not in table.title:
            mask &= frame[column].isna()
    return frame[mask]


def command(records: pd.DataFrame, table: Table, lrs: list[float], store: Path, conf_dir: Path,
            defaults_of, seeds: list[int] | None = None) -> list[str]:
    """``python sweep.py -m ...`` running ``lrs`` with the rows' settings (and ``seeds`` instead of
    theirs, when given), into ``store``."""
    experiment = known_experiment(records["experiment"].iloc[0], conf_dir)
    defaults, swept = defaults_of(experiment)
    configs = [result_config({k: v for k, v in row.items() if k in defaults and not _missing(v)})
               for row in records.to_dict("records")]
    always = {*SIZE_AXES, *table.title, *swept} - {LR}
    settings = []
    for key in defaults:
        values = seeds if key == SEED and seeds else _distinct([c[key] for c in configs])
        if key != LR and (key in always or len(values) > 1 or values[0] != defaults[key]):
            settings.append(f"{key}={','.join(override_value(v) for v in values)}")  # >1: sizes, seeds
    head = ["python", "sweep.py", "-m", f"store={override_value(str(store))}"]
    head += [f"experiment={experiment}"] if experiment else []
    return head + settings + [f"{LR}=" + ",".join(value_text(v) for v in lrs)]


def _distinct(values: list) -> list:
    """The distinct values, sorted; mappings (model_args, model_roles) in the order first seen."""
    if any(isinstance(v, dict) for v in values):
        return list({json.dumps(v, sort_keys=True): v for v in values}.values())
    return sorted(set(values))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


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
    from .report import load  # here: report loads matplotlib, which `--help` and ingest need not

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
    for table in build_tables(frame):  # the report's tables and optima (analysis.report.analyse)
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
