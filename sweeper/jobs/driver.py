"""A sweep from start to end: expand the grid, check every cell, skip what the store holds,
launch the rest in batches with a progress line as each cell finishes, and list the failures.

Hydra-free apart from the error type: the plugin passes ``compose`` (overrides -> the app config)
and ``launch`` (a batch of override lists and a ``submitted`` callback -> per job None or the
exception it ended with). A launcher that queues jobs (Slurm) calls ``submitted(job_ids)`` as soon
as they are queued; each cell's job id then goes into the store (Store.note_queued) for status.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TextIO

from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from trainer.cost import cell_relative_compute

from sweeper.grid.argv import hydra_quote
from sweeper.grid.cells import DONE, PlannedCell, job_overrides, plan
from sweeper.grid.expand import Cell, GridError, expand
from sweeper.store import QueueError, RecordWriteError, Store, StoreError
from sweeper.store.schema import SchemaError

from .job import JobLostError, NotLaunched, describe, failed_record
from .progress import Progress, clock
from .watch import StoreWatcher

Submitted = Callable[[list[str]], None]
Launch = Callable[[list[list[str]], Submitted], Sequence[Optional[BaseException]]]


class SweepError(CompactHydraException):
    """The sweep stopped (bad grid) or ended with failed cells; the message says which and why."""


@dataclass(frozen=True)
class SweepSettings:
    store: Path  # absolute: every job writes here, whatever its node or working directory
    force: bool
    experiment: Optional[str]
    batch_size: Optional[int]  # cells launched together; None: all at once
    poll_s: float = 2.0  # how often a running batch's new records are looked for
    cells_on: Optional[str] = None  # "cuda": the launcher gives each cell a GPU; None: this machine


def _batches(cells: list[PlannedCell], size: Optional[int]) -> list[list[PlannedCell]]:
    size = size or max(len(cells), 1)
    return [cells[i:i + size] for i in range(0, len(cells), size)]


def _settle(cell: PlannedCell, outcome: Optional[BaseException], store: Store, settings: SweepSettings,
            job_id: Optional[str], before: set[str]) -> Optional[dict]:
    """The attempt of a cell whose record the watcher did not see take in a new attempt: the job's
    own when the job finished, failed to write its record, or failed after recording its cell (a
    Slurm job whose cell raised), its record written here from it where it is missing; None when
    the job left the cell to another run that is training it; else a failed attempt written here.
    A record that cannot be written makes the cell failed (RecordWriteError), never finished.
    ``before``: the cell's attempt files when its batch was launched."""
    attempt = store.newest_attempt(cell.key, before)
    if attempt is not None and (outcome is None or isinstance(outcome, RecordWriteError)
                                or attempt["status"] in DONE or (
            job_id is not None and (attempt["runtime"].get("slurm") or {}).get("job_id") == job_id)):
        try:
            store.promote(cell.key)
        except RecordWriteError as err:
            return failed_record(cell.config.to_dict(), err, experiment=settings.experiment)
        return attempt
    if outcome is None:
        if store.claimed(cell.key):
            return None
        # a job that left the cell alone: it was finished when the job looked
        try:
            done = store.result(cell.key)
            if done["status"] in DONE:
                return done
        except StoreError:
            pass
    record = failed_record(cell.config.to_dict(),
                           outcome or JobLostError("the job ended without writing a record (killed? see its log)"),
                           experiment=settings.experiment)
    try:
        store.finish(record)
    except RecordWriteError as err:
        return failed_record(cell.config.to_dict(), err, experiment=settings.experiment)
    return record


def _unrecorded(record: dict) -> bool:
    """Whether a cell failed because the store could not write its record."""
    return (record.get("error") or {}).get("type") == RecordWriteError.__name__


def _note_submitted(batch: list[PlannedCell], store: Store, settings: SweepSettings, out: TextIO,
                    job_ids_of: dict[str, str]) -> Submitted:
    """Notes each cell's Slurm job in the store's queue entries and in ``job_ids_of``."""
    def submitted(job_ids: list[str]) -> None:
        job_ids_of.update((cell.key, job_id) for cell, job_id in zip(batch, job_ids))
        for cell, job_id in zip(batch, job_ids):
            store.note_queued(cell.key, job_id=job_id, experiment=settings.experiment,
                              config=cell.config.to_dict(), written_by="sweep")
        print(f"[sweep] {len(job_ids)} cells queued as Slurm jobs {job_ids[0]}"
              + (f" .. {job_ids[-1]}" if len(job_ids) > 1 else ""), file=out, flush=True)
    return submitted


def queued_jobs(store: Store, out: TextIO) -> dict[str, str]:
    """Cell key -> the Slurm job pending or running for it, e.g. from an earlier sweep whose shell
    is gone: that job records the cell, so the sweep leaves it alone rather than train it twice."""
    try:
        return {cell["key"]: cell["job_id"] for cell in store.queued() or []}
    except QueueError as err:
        print(f"[sweep] note: cannot tell which cells are in the Slurm queue ({err})", file=out)
        return {}


def sweep_cells(overrides: list[str], settings: SweepSettings) -> list[Cell]:
    """The grid's cells, each with the store's absolute path."""
    return expand([*overrides, f"store={hydra_quote(str(settings.store))}"])


def report_cleanup(store: Store, out: TextIO) -> None:
    """Removes what dead jobs left in the store (Store.clean), a line for each kind; raises
    SweepError, before anything trains, where a finished attempt's record cannot be written."""
    done = store.clean()
    for line in done.lines:
        print(f"[sweep] {line}", file=out)
    if done.unwritten:
        raise SweepError(f"{done.unwritten_line()}\nnothing was trained: fix the store "
                         f"(disk space, quota, permissions) and rerun")


def run_sweep(overrides: list[str], settings: SweepSettings, compose: Callable[[list[str]], DictConfig],
              launch: Launch, out: TextIO = sys.stdout, cells: Optional[list[Cell]] = None) -> list[dict]:
    """Runs the sweep (``cells`` of it, when given: a search's round); returns the records of the
    cells it ran. Raises SweepError before launching anything for a bad grid, and after the last
    batch if any cell failed."""
    store, search_round = Store(settings.store), cells is not None
    if not search_round:  # a search cleans once, when it starts (sweeper.search.sweep)
        report_cleanup(store, out)  # before the plan: it promotes finished attempts to records
    try:
        cells = sweep_cells(overrides, settings) if cells is None else cells
        # The queue before the store: a job that ends in between has its record seen by plan.
        queued = queued_jobs(store, out)
        todo, skipped = plan(cells, compose, store, settings.force, settings.cells_on)
    except (GridError, SchemaError, StoreError) as err:
        raise SweepError(str(err)) from None
    total = len(todo) + len(skipped)
    note = f" ({len(cells) - total} duplicate cells dropped)" if len(cells) > total else ""
    print(f"[sweep] {total} cells{note}, store {store.path}", file=out)
    if skipped:
        print(f"[sweep] skipping {len(skipped)} of {total} cells already in the store "
              f"(force=true reruns them)", file=out)
    left = sorted(queued[cell.key] for cell in todo if cell.key in queued)
    if left:
        print(f"[sweep] leaving {len(left)} cells to the Slurm jobs already queued for them "
              f"({', '.join(left)}): they record them (scancel them to resubmit)", file=out)
        todo = [cell for cell in todo if cell.key not in queued]
    if settings.force:
        for cell in todo:  # a finished run's checkpoint would make the rerun a no-op
            if cell.previous in DONE:
                store.forget_run(cell.key)
    out.flush()

    progress = Progress({cell.key: cell_relative_compute(cell.config) for cell in todo}, out)
    if settings.batch_size != 1:  # cells side by side: the dearest first, so none trains alone at the end
        todo = sorted(todo, key=lambda cell: -progress.costs[cell.key])
    landed: dict[str, dict] = {}
    elsewhere: set[str] = set()
    unrecorded: list[dict] = []  # cells whose record the store could not write

    def land(cell: PlannedCell, record: Optional[dict]) -> None:
        if record is None:
            elsewhere.add(cell.key)
            progress.add(cell.key, "elsewhere")
            return
        landed[cell.key] = record
        progress.add(cell.key, record["status"])
        if _unrecorded(record):
            unrecorded.append(record)

    def unclaimed(cells: list[PlannedCell]) -> list[PlannedCell]:
        """The cells no other run is training now; the others are left to it, and said so."""
        claims = store.live_claims()
        taken = [cell for cell in cells if cell.key in claims]
        if taken:
            owners = sorted({claims[c.key].owner() for c in taken})
            print(f"[sweep] leaving {len(taken)} cells to the runs training them now "
                  f"({'; '.join(owners)}): their records land in the store", file=out, flush=True)
        for cell in taken:
            land(cell, None)
        return [cell for cell in cells if cell.key not in claims]

    batches = _batches(unclaimed(todo), settings.batch_size)
    not_launched = 0
    for n, batch in enumerate(batches):
        if n:
            batch = unclaimed(batch)  # claimed since the sweep started (another sweep's job)
        if not batch:
            continue
        job_ids: dict[str, str] = {}
        with StoreWatcher(batch, store, land, settings.poll_s) as watcher:
            try:
                outcomes = list(launch([job_overrides(c) for c in batch],
                                       _note_submitted(batch, store, settings, out, job_ids)))
            except Exception as err:  # the launcher lost the whole batch (e.g. a killed array job)
                outcomes = [err] * len(batch)
        for cell, outcome in zip(batch, outcomes):
            if isinstance(outcome, NotLaunched):  # the pool stopped dispatching (below)
                not_launched += 1
            elif cell.key not in landed and cell.key not in elsewhere:
                land(cell, _settle(cell, outcome, store, settings, job_ids.get(cell.key), watcher.before[cell.key]))
        if unrecorded:  # every later cell would train only to fail the same way
            not_launched += sum(len(b) for b in batches[n + 1:])
            if not_launched:
                print(f"[sweep] stopping: the store cannot record results; {not_launched} cells not "
                      f"launched", file=out, flush=True)
            break

    records = list(landed.values())
    failed = [r for r in records if r["status"] == "failed"]
    if records:
        print(f"[sweep] ran {len(records)} cells in {clock(progress.now() - progress.started)}",
              file=out)
    else:
        print("[sweep] nothing to run", file=out)
    if elsewhere:
        print(f"[sweep] {len(elsewhere)} cells were being trained by another run: "
              f"`python -m sweeper status --store {shlex.quote(str(store.path))}` shows when they land", file=out)
    out.flush()
    if failed:
        stopped = (f"; {not_launched} cells were not launched: the store cannot record results, fix "
                   f"it and rerun (finished attempts are recorded then, not trained again)"
                   if not_launched else "")
        raise SweepError(
            f"{len(failed)} of {len(records)} cells failed (their records say why; rerunning the "
            f"sweep retries them){stopped}:\n  " + "\n  ".join(describe(r) for r in failed))
    return records
