"""A sweep from start to end: expand the grid, check every cell, skip what the store holds,
launch the rest in batches with a progress line as each cell finishes, and list the failures.

Hydra-free apart from the error type: the plugin passes ``compose`` (overrides -> the app config)
and ``launch`` (a batch of override lists -> per job None or the exception it ended with).
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TextIO

from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from .grid import GridError, expand
from .job import describe, failed_record
from .plan import DONE, PlannedCell, plan
from .progress import Progress, clock
from .record import SchemaError
from .result_store import read_record, record_status, run_dir, write_record
from .watch import StoreWatcher

Launch = Callable[[list[list[str]]], Sequence[Optional[BaseException]]]


class SweepError(CompactHydraException):
    """The sweep stopped (bad grid) or ended with failed cells; the message says which and why."""


class JobLostError(RuntimeError):
    """A job ended without writing its cell's record."""


@dataclass(frozen=True)
class SweepSettings:
    store: Path  # absolute: every job writes here, whatever its node or working directory
    force: bool
    experiment: Optional[str]
    batch_size: Optional[int]  # cells launched together; None: all at once
    poll_s: float = 2.0  # how often a running batch's new records are looked for


def hydra_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _batches(cells: list[PlannedCell], size: Optional[int]) -> list[list[PlannedCell]]:
    size = size or max(len(cells), 1)
    return [cells[i:i + size] for i in range(0, len(cells), size)]


def _settle(cell: PlannedCell, outcome: Optional[BaseException], settings: SweepSettings) -> dict:
    """The cell's record after its job: the one the job wrote, or a failed one written here."""
    if record_status(settings.store, cell.key) is None:
        err = outcome or JobLostError("the job ended without writing a record (killed? see its log)")
        write_record(settings.store, failed_record(cell.config.to_dict(), err,
                                                   experiment=settings.experiment))
    return read_record(settings.store, cell.key)


def run_sweep(overrides: list[str], settings: SweepSettings, compose: Callable[[list[str]], DictConfig],
              launch: Launch, out: TextIO = sys.stdout) -> list[dict]:
    """Runs the sweep; returns the records of the cells it ran. Raises SweepError before launching
    anything for a bad grid, and after the last batch if any cell failed."""
    store = settings.store
    try:
        cells = expand([*overrides, f"store={hydra_quote(str(store))}"])
        todo, skipped = plan(cells, compose, store, settings.force)
    except (GridError, SchemaError) as err:
        raise SweepError(str(err)) from None
    total = len(todo) + len(skipped)
    note = f" ({len(cells) - total} duplicate cells dropped)" if len(cells) > total else ""
    print(f"[sweep] {total} cells{note}, store {store}", file=out)
    if skipped:
        print(f"[sweep] skipping {len(skipped)} of {total} cells already in the store "
              f"(force=true reruns them)", file=out)
    if settings.force:
        for cell in todo:  # a finished run's checkpoint would make the rerun a no-op
            if cell.previous in DONE:
                shutil.rmtree(run_dir(store, cell.key), ignore_errors=True)
    out.flush()

    progress = Progress(len(todo), out)
    landed: dict[str, dict] = {}

    def land(cell: PlannedCell, record: dict) -> None:
        landed[cell.key] = record
        progress.add(record["status"])

    for batch in _batches(todo, settings.batch_size):
        with StoreWatcher(batch, store, land, settings.poll_s):
            try:
                outcomes = list(launch([list(c.cell.overrides) for c in batch]))
            except Exception as err:  # the launcher lost the whole batch (e.g. a killed array job)
                outcomes = [err] * len(batch)
        for cell, outcome in zip(batch, outcomes):
            if cell.key not in landed:
                land(cell, _settle(cell, outcome, settings))

    records = list(landed.values())
    failed = [r for r in records if r["status"] == "failed"]
    if records:
        print(f"[sweep] ran {len(records)} cells in {clock(progress.now() - progress.started)}",
              file=out)
    else:
        print("[sweep] nothing to run", file=out)
    out.flush()
    if failed:
        raise SweepError(
            f"{len(failed)} of {len(records)} cells failed (their records say why; rerunning the "
            f"sweep retries them):\n  " + "\n  ".join(describe(r) for r in failed))
    return records
