"""The result store behind one object: records, attempts, claims, queue entries and leftovers.

A sweep, a job, the search, status and analysis talk to ``Store``; the modules below it each own
one kind of file (sweeper.store.records: records and attempts, .index: the Parquet index, .claims,
.queue, .leftovers, .asked, .journal; .schema: the record's schema and its migrations, pure
functions of a record that callers use directly).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import pandas as pd

from trainer.config import CHECKPOINT

from . import asked, claims, index, journal, leftovers, queue, records
# The errors and the exit code the Store's callers handle, beside the Store itself.
from .queue import QueueError
from .records import STORE_ERROR, RecordWriteError, StoreError

__all__ = ["Store", "StoreError", "RecordWriteError", "QueueError", "STORE_ERROR"]


class Store:
    """The store directory ``path`` (absolute where jobs on other nodes or directories write it)."""

    def __init__(self, path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # ---- the directory -------------------------------------------------------------------------
    def check_readable(self, allow_empty: bool = False) -> Path:
        return records.check_readable_store(self.path, allow_empty)

    def check_writable(self) -> None:
        records.check_writable_store(self.path)

    def clean(self) -> leftovers.Cleanup:
        """Removes what dead jobs left behind and writes the records finished attempts lack."""
        return leftovers.clean(self.path)

    def unrecorded(self) -> list[str]:
        """The cells with a finished attempt but no record yet (sweeper.store.leftovers)."""
        return leftovers.unrecorded(self.path)

    def repair_journal(self, name: str) -> Optional[str]:
        """Cuts the store's journal file ``name`` at its first torn line; a line saying so, or None."""
        return journal.repair_journal(self.path / name)

    def note_asked(self, experiment: Optional[str], overrides: list[str]) -> Path:
        """Notes what a sweep asked for, so status expects its cells."""
        return asked.write_asked(self.path, experiment, overrides)

    def asks(self) -> list[dict]:
        """What the store's sweeps asked for (note_asked), oldest first."""
        return asked.read_asked(self.path)

    # ---- cells: claim, run, finish -------------------------------------------------------------
    def claim(self, key: str, *, job_id: Optional[str] = None, experiment: Optional[str] = None,
              config: Optional[dict] = None) -> tuple[Optional[claims.Held], Optional[claims.Claim]]:
        """(held, None) when this process now trains the cell, or (None, the live claim of its owner)."""
        return claims.try_claim(self.path, key, job_id=job_id, experiment=experiment, config=config)

    def claimed(self, key: str) -> bool:
        """Whether a live run holds the cell's claim now."""
        claim = claims.read_claim(self.path, key)
        return claim is not None and claims.is_live(claim, now=claims.store_now(self.path))

    def live_claims(self) -> dict[str, claims.Claim]:
        return claims.live_claims(self.path)

    def run_dir(self, key: str) -> Path:
        """The cell's trainer run dir (its checkpoints)."""
        return records.run_dir(self.path, key)

    def keep_checkpoint(self, key: str) -> None:
        """Marks the cell's run dir so its checkpoint stays after its record (keep_checkpoints=true)."""
        run = self.run_dir(key)
        run.mkdir(parents=True, exist_ok=True)
        (run / leftovers.KEEP).touch()

    def drop_checkpoint(self, key: str) -> None:
        """Removes the cell's checkpoint, once its record is written."""
        (self.run_dir(key) / CHECKPOINT).unlink(missing_ok=True)

    def forget_run(self, key: str) -> None:
        """Removes the cell's run dir, so a forced rerun trains from the start."""
        shutil.rmtree(self.run_dir(key), ignore_errors=True)

    def finish(self, record: dict) -> Path:
        """Writes the cell's attempt and record (RecordWriteError where the store cannot)."""
        return records.write_record(self.path, record)

    def promote(self, key: str) -> Optional[dict]:
        """Makes the cell's result its record, where an attempt is newer than the record."""
        return records.promote(self.path, key)

    # ---- reading ---------------------------------------------------------------------------------
    def result(self, key: str) -> dict:
        """The cell's record (StoreError where none reads)."""
        return records.read_record(self.path, key)

    def status(self, key: str) -> Optional[str]:
        """The status of the cell's record; None where it has none."""
        return records.record_status(self.path, key)

    def cells(self, keys) -> dict[str, Optional[str]]:
        """The status of each of a grid's cells; None for those the store lacks."""
        return {key: self.status(key) for key in keys}

    def attempts(self, key: str) -> list[dict]:
        return records.attempts(self.path, key)

    def attempt_counts(self) -> dict[str, int]:
        """Cell key -> number of attempts on file, for the cells that have attempt files."""
        return records.attempt_counts(self.path)

    def attempt_names(self, key: str) -> set[str]:
        return records.attempt_names(self.path, key)

    def newest_attempt(self, key: str, before: set[str]) -> Optional[dict]:
        """The cell's newest attempt not among ``before``, recorded or not."""
        return records.newest_attempt(self.path, key, before)

    def recorded_attempt(self, key: str, before: set[str]) -> Optional[dict]:
        """The cell's newest attempt not among ``before``, once its record reads back."""
        return records.recorded_attempt(self.path, key, before)

    def load(self, strict: bool = False) -> pd.DataFrame:
        """One flat row per record (sweeper.store.index.load_store)."""
        return index.load_store(self.path, strict)

    # ---- the Slurm queue -------------------------------------------------------------------------
    def note_queued(self, key: str, *, job_id: str, experiment: Optional[str], config: dict,
                    written_by: str) -> None:
        """Notes the Slurm job that runs the cell, so status finds it."""
        queue.write_entry(self.path, key, job_id=job_id, experiment=experiment, config=config,
                          written_by=written_by)

    def queued(self) -> Optional[list[dict]]:
        """The store's cells pending or running in the Slurm queue; None where this machine has no
        Slurm. Raises QueueError where squeue gives no answer."""
        return queue.queued_cells(self.path) if queue.squeue_available() else None
