"""A transfer search over tables, in rounds, against an oracle; its studies persisted in optuna.

The strategy (sweeper.search.transfer) decides the cells; this module runs it: each round asks every
unfinished table for its next cells, answers them all at once through the oracle (the sweep
trains them as one batch of jobs, the replay looks them up in a complete store), and records each
answer as a trial of the row's optuna study. Rows' studies live in an optuna JournalStorage with a
file backend (``STORE/search/journal.log``): an append-only log with file locks, safe on a shared
filesystem, so a killed search that is run again answers every cell it already has from there
(and the sweep's oracle from the store) and trains only what is left.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, TextIO

from trainer.cost import relative_compute

from .transfer import BUDGET, DIVERGED, TREND_PARAMS, Line, RowResult, TableState, step

JOURNAL = Path("search") / "journal.log"
LR = "lr"


class SearchError(ValueError):
    """A search that cannot run (a bad line, an incomplete oracle); the message says why."""


@dataclass(frozen=True)
class Ask:
    table: int  # index into the search's tables
    row: int
    lr: float


class Oracle(Protocol):
    def answer(self, asks: list[Ask]) -> list[float]:
        """Each cell's final loss, or DIVERGED; raises when a cell cannot be had."""


@dataclass(frozen=True)
class SearchTable:
    name: str  # for people: "param=sp, depth=4"
    line: Line
    row_ids: tuple[str, ...]  # one optuna study name per row, unique in the storage


@dataclass
class TableResult:
    table: SearchTable
    rows: list[RowResult]
    spent: float

    @property
    def compute_fraction(self) -> float:
        return self.spent / self.table.line.grid_cost


def journal_storage(store: Path):
    """The store's optuna storage: a journal file, created on first use."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = store / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


class _Studies:
    """One optuna study per table row: its trials are the row's answered cells."""

    def __init__(self, storage) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = storage if storage is not None else optuna.storages.InMemoryStorage()
        self.studies: dict[str, object] = {}

    def study(self, name: str):
        import optuna

        if name not in self.studies:
            self.studies[name] = optuna.create_study(study_name=name, storage=self.storage,
                                                     direction="minimize", load_if_exists=True)
        return self.studies[name]

    def known(self, name: str) -> dict[float, float]:
        """lr -> outcome of the row's trials so far (a pruned trial is a diverged cell)."""
        from optuna.trial import TrialState

        out = {}
        for trial in self.study(name).get_trials(deepcopy=False):
            if LR in trial.params and trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
                out[float(trial.params[LR])] = (trial.value if trial.state == TrialState.COMPLETE
                                                else DIVERGED)
        return out

    def tell(self, name: str, lrs: tuple[float, ...], lr: float, outcome: float) -> None:
        from optuna.distributions import FloatDistribution
        from optuna.trial import TrialState, create_trial

        space = {LR: FloatDistribution(min(lrs), max(lrs))}
        if math.isinf(outcome):  # diverged: pruned, which optuna's samplers rank below any value
            trial = create_trial(params={LR: lr}, distributions=space, state=TrialState.PRUNED)
        else:
            trial = create_trial(params={LR: lr}, distributions=space, value=outcome)
        self.study(name).add_trial(trial)


def run_search(tables: list[SearchTable], oracle: Oracle, *, storage=None, budget: float = BUDGET,
               refine: bool = False, out: Optional[TextIO] = None) -> list[TableResult]:
    """Runs the strategy on every table to the end; ``storage`` is an optuna storage (None: in
    memory); ``refine`` as in sweeper.search.transfer.step. Progress lines go to ``out`` (None: silent)."""
    if not 0 < budget <= 1:
        raise SearchError(f"search_budget={budget}: give a fraction of the grid's compute in (0, 1]")
    studies = _Studies(storage)
    states = [TableState(t.line) for t in tables]
    known = [[None] * len(t.line.sizes) for t in tables]
    for n in itertools.count(1):  # each round answers new cells of a finite line
        asks = []
        for i, (table, state) in enumerate(zip(tables, states)):
            asks += _next_asks(i, table, state, studies, known[i], budget, refine)
        if not asks:
            break
        if out is not None:
            print(f"[search] round {n}: {len(asks)} cell(s): " + "; ".join(
                f"{tables[a.table].name} {tables[a.table].line.axis}={_text(tables[a.table].line.sizes[a.row])} "
                f"lr={_text(a.lr)}" for a in asks), file=out, flush=True)
        for ask, outcome in zip(asks, oracle.answer(asks)):
            table = tables[ask.table]
            studies.tell(table.row_ids[ask.row], table.line.lrs, ask.lr, outcome)
            states[ask.table].outcomes[ask.row][ask.lr] = outcome
    return [TableResult(t, s.settled, s.spent) for t, s in zip(tables, states)]


def _next_asks(i: int, table: SearchTable, state: TableState, studies: _Studies, known: list,
               budget: float, refine: bool) -> list[Ask]:
    """The table's next cells that its studies cannot answer (those they can are filled in)."""
    while True:
        lrs = step(state, budget, refine)
        if not lrs:
            return []
        r = state.row
        if known[r] is None:
            known[r] = studies.known(table.row_ids[r])
        answered = [lr for lr in lrs if lr in known[r]]
        for lr in answered:
            state.outcomes[r][lr] = known[r][lr]
        if len(answered) < len(lrs):
            return [Ask(i, r, lr) for lr in lrs if lr not in known[r]]


def _text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def summary(results: list[TableResult]) -> str:
    """Per table, how each row settled and with how many cells, and the compute used."""
    lines = []
    for result in results:
        line = result.table.line
        rows = ", ".join(f"{_text(r.size)}: {r.how} by {r.cells}" + (
            f" (eta* {r.eta_star:.2f})" if r.eta_star is not None else "") for r in result.rows)
        lines.append(f"[search] {result.table.name}: {line.axis} {rows}; "
                     f"{100 * result.compute_fraction:.0f}% of the grid's compute")
    return "\n".join(lines)


def table_line(table) -> Line:
    """The line of a store's table (analysis.tables.Table): its sizes, its lrs, the cost of a cell per
    size. Within a table every cell trains the same tokens, so cost is up to a constant 12 d^2 L."""
    fixed = table.title.get("depth" if table.axis == "width" else "width")
    costs = tuple(relative_compute(s, fixed) if table.axis == "width" else relative_compute(fixed, s)
                  for s in table.sizes)
    return Line(table.axis, tuple(float(s) for s in table.sizes), tuple(float(x) for x in table.lrs), costs,
                trend=table.title.get("param") in TREND_PARAMS)


def table_state(table) -> TableState:
    """A store's table as the strategy's state: every finished cell an outcome."""
    outcomes = [{float(lr): DIVERGED if table.diverged[r, c] else float(table.loss[r, c])
                 for c, lr in enumerate(table.lrs) if table.runs[r, c] > 0} for r in range(len(table.sizes))]
    return TableState(table_line(table), outcomes)
