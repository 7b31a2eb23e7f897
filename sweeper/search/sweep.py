"""``search=transfer``: the grid line's cells, run round by round as the transfer search asks.

Every cell of the line is checked up front as a grid sweep checks it; then each round's cells go
through sweeper.jobs.driver.run_sweep as one batch of jobs on the sweep's own launcher (basic,
submitit_local, Slurm), so they land in the same store, with the same progress, resume and
failure handling. A cell the store already holds is answered from it, never trained again; one
that a Slurm job queued earlier or another run is training (a search killed and run again while
its round's jobs still run) is waited for, and trained here only if that job ends without it.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

from omegaconf import DictConfig

from analysis.tables import SIZE_AXES
from trainer.cost import cell_relative_compute

from sweeper.store import Store, StoreError
from sweeper.jobs.driver import (Launch, SweepError, SweepSettings, queued_jobs, report_cleanup, run_sweep,
                     sweep_cells)
from sweeper.grid.expand import Cell, GridError
from sweeper.grid.cells import PlannedCell, plan
from sweeper.store.schema import DONE, SchemaError, cell_key
from .rounds import JOURNAL, LR, Ask, SearchError, SearchTable, journal_storage, run_search, summary
from .transfer import DIVERGED, TREND_PARAMS, Line


class SweepOracle:
    """Answers a round by training its cells (those the store lacks) as one batch of jobs."""

    def __init__(self, cells: list[dict], settings: SweepSettings,
                 compose: Callable[[list[str]], DictConfig], launch: Launch, out: TextIO) -> None:
        self.cells = cells  # per table: (row, lr) -> PlannedCell
        self.settings, self.compose, self.launch, self.out = settings, compose, launch, out

    def answer(self, asks: list[Ask]) -> list[float]:
        planned = [self._cell(a) for a in asks]
        finished: dict[str, dict] = {}  # key -> the cell's ok or diverged record, read once
        todo = planned
        while todo:  # run_sweep leaves cells to the jobs already training them: their records come
            run_sweep([], self.settings, self.compose, self.launch, self.out, cells=[p.cell for p in todo])
            todo = self._unfinished(todo, finished)
        return [_outcome(finished[p.key]) for p in planned]

    def _unfinished(self, planned: list[PlannedCell], finished: dict[str, dict]) -> list[PlannedCell]:
        """The cells without an ok or diverged record once no Slurm job queued earlier and no other
        run is on them (those are waited for): the cells such a job or run left, to train here.
        ``finished`` gets the records of the cells that have one."""
        store, told = Store(self.settings.store), False
        while True:
            for p in planned:
                if p.key not in finished:
                    record = _done_record(store, p.key)
                    if record is not None:
                        finished[p.key] = record
            left = [p for p in planned if p.key not in finished]
            others = queued_jobs(store, self.out).keys() | store.live_claims().keys() if left else set()
            busy = [p for p in left if p.key in others]
            if not busy:
                return left
            if not told:
                print(f"[search] waiting for {len(busy)} cell(s) of the round that Slurm jobs queued "
                      f"earlier or other runs are training (scancel a job to train its cell here)",
                      file=self.out, flush=True)
                told = True
            time.sleep(self.settings.poll_s)

    def _cell(self, ask: Ask) -> PlannedCell:
        """The grid's cell, or for a refining half step off the line its row's cell at that lr."""
        cells = self.cells[ask.table]
        if (ask.row, ask.lr) not in cells:
            row = next(p.cell for (r, _), p in cells.items() if r == ask.row)
            value = repr(ask.lr)
            cell = Cell(tuple(f"{LR}={value}" if o.startswith(f"{LR}=") else o for o in row.overrides),
                        tuple((k, value if k == LR else v) for k, v in row.axes))
            todo, skipped = plan([cell], self.compose, Store(self.settings.store), self.settings.force,
                                 self.settings.cells_on)
            cells[ask.row, ask.lr] = (todo + skipped)[0]
        return cells[ask.row, ask.lr]


def _done_record(store: Store, key: str) -> Optional[dict]:
    """Cell ``key``'s record when it is ok or diverged; None when it has none, or a failed, corrupt
    or invalid one (as Store.status)."""
    try:
        record = store.result(key)
    except StoreError:
        return None
    return record if record["status"] in DONE else None


def _outcome(record: dict) -> float:
    loss = record["metrics"].get("val_loss")
    if record["status"] == "diverged" or (record["status"] == "ok" and loss is None):
        return DIVERGED
    if record["status"] != "ok":  # run_sweep raises on failed cells; a record raced in since
        raise SearchError(f"cell {record['key']} is {record['status']}: rerun the sweep to retry it")
    return float(loss)


def _tables(planned: list[PlannedCell]) -> tuple[list[SearchTable], list[dict]]:
    """The grid's tables: one per value of every swept setting but the size axis and lr."""
    swept = {key for p in planned for key, _ in p.cell.axes}
    if LR not in swept:
        raise SearchError("search=transfer searches the learning rate: sweep lr over the line's values, "
                          "e.g. lr=-10:-5")
    axis = next((a for a in SIZE_AXES if a in swept), "width")
    groups: dict[tuple, list[PlannedCell]] = {}
    for p in planned:
        groups.setdefault(tuple((k, v) for k, v in p.cell.axes if k not in (axis, LR)), []).append(p)
    tables, cells = [], []
    for title, members in groups.items():
        configs = [p.config for p in members]
        sizes = sorted({float(getattr(c, axis)) for c in configs})
        lrs = sorted({float(c.lr) for c in configs})
        by_cell = {(sizes.index(float(getattr(p.config, axis))), float(p.config.lr)): p for p in members}
        first = {sizes.index(float(getattr(p.config, axis))): p.config for p in members}
        costs = tuple(cell_relative_compute(c) for _, c in sorted(first.items()))
        line = Line(axis, tuple(sizes), tuple(lrs), costs, trend=configs[0].param in TREND_PARAMS)
        # a row's study: the row's settings, every lr alike
        row_ids = tuple("row-" + cell_key({**c.to_dict(), LR: 0.0}) for _, c in sorted(first.items()))
        name = ", ".join(f"{k}={v}" for k, v in title) or "the line"
        tables.append(SearchTable(name, line, row_ids))
        cells.append(by_cell)
    return tables, cells


def run_transfer_sweep(overrides: list[str], settings: SweepSettings,
                       compose: Callable[[list[str]], DictConfig], launch: Launch, *, budget: float,
                       refine: bool = False, out: TextIO = sys.stdout) -> list:
    """Runs the transfer search over the grid line; returns its per-table results. Raises SweepError
    before anything runs for a bad line, and after a round with failed cells."""
    store = Store(settings.store)
    report_cleanup(store, out)  # before the plan: it promotes finished attempts to records
    try:
        todo, skipped = plan(sweep_cells(overrides, settings), compose, store, settings.force,
                             settings.cells_on)
        tables, cells = _tables(todo + skipped)
    except (GridError, SchemaError, SearchError) as err:
        raise SweepError(str(err)) from None
    print(f"[search] transfer search over {len(tables)} table(s) of {len(todo) + len(skipped)} grid cells, "
          f"budget {budget:g} of the grid's compute{', refining' if refine else ''}; studies in {settings.store / 'search'}",
          file=out, flush=True)
    repaired = store.repair_journal(JOURNAL)
    if repaired:
        print(f"[search] {repaired}", file=out, flush=True)
    try:
        results = run_search(tables, SweepOracle(cells, settings, compose, launch, out),
                             storage=journal_storage(settings.store), budget=budget, refine=refine,
                             out=out)
    except SearchError as err:
        raise SweepError(str(err)) from None
    print(summary(results), file=out, flush=True)
    return results
