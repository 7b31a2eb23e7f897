"""What a killed job leaves in a store, removed (or completed) by the next sweep or `python -m sweeper clean`.

A job killed between "record written" and "cleanup" leaves its checkpoint (GBs per cell at paper
scale) and its claim; a kill during an atomic write leaves a dot-named temp file; a job killed, or a
record write that failed (full disk, quota), between a cell's attempt and its record leaves a
finished attempt without its record, which is written from the attempt here rather than trained
again. Nothing here touches a cell that is being trained (a live claim), a checkpoint its run asked
to keep, or a temp file young enough to still be written.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from trainer.config import CHECKPOINT

from .claims import (CLAIMS, STALE_S, BrokenClaim, inspect_claim, is_live, read_claim, remove_dead,
                     store_now)
from .schema import DONE, KEY_PATTERN, SchemaError
from .records import (ATTEMPTS, RECORDS, RUNS, RecordWriteError, StoreError, attempts, promote, read_record,
                           record_path, record_status, result_of)

KEEP = "keep_checkpoint"  # in a run dir: keep its checkpoint after the record (keep_checkpoints=true)


@dataclass
class Cleanup:
    lines: list[str] = field(default_factory=list)  # what was removed or written, a line per kind
    unwritten: list[str] = field(default_factory=list)  # finished attempts whose record cannot be written: why

    def unwritten_line(self) -> str:
        """One line for the finished attempts whose record cannot be written."""
        return (f"{len(self.unwritten)} finished cell(s) have no record and the store cannot write it, e.g. "
                f"{self.unwritten[0]}")


def _old(path: Path, now: float, stale_s: float) -> bool:
    try:
        return now - path.stat().st_mtime > stale_s
    except FileNotFoundError:
        return False


def _behind(store: Path, key: str) -> bool:
    """Whether the cell has an attempt newer than its record (or none): a cheap test, by mtime, of
    the cells whose record may miss an attempt."""
    try:
        newest = max((e.stat().st_mtime_ns for e in os.scandir(store / ATTEMPTS / key)
                      if e.name.endswith(".json") and not e.name.startswith(".")), default=None)
    except OSError:
        return False
    if newest is None:
        return False
    try:
        return record_path(store, key).stat().st_mtime_ns < newest
    except FileNotFoundError:
        return True


def unrecorded(store: Path, stale_s: float = STALE_S) -> list[str]:
    """The cells whose newest attempt is not (yet) their record and whose job is gone: what clean
    (or the next sweep) writes. Reads only."""
    now = store_now(store)
    keys = []
    for folder in sorted((Path(store) / ATTEMPTS).glob("*")):
        key = folder.name
        if not KEY_PATTERN.fullmatch(key) or not _behind(store, key):  # the cheap test first
            continue
        claim = read_claim(store, key)
        if claim is not None and is_live(claim, stale_s, now):
            continue
        best = result_of(attempts(store, key))
        try:
            record = read_record(store, key)
        except StoreError:
            record = None
        if best is not None and best != record:
            keys.append(key)
    return keys


def _promote_finished(store: Path, stale_s: float, now: float, done: Cleanup) -> None:
    written = 0
    for folder in (store / ATTEMPTS).glob("*"):
        key = folder.name
        if not KEY_PATTERN.fullmatch(key) or not _behind(store, key):
            continue
        claim = read_claim(store, key)
        if claim is not None and is_live(claim, stale_s, now):
            continue  # its job is between the two writes
        try:
            written += promote(store, key) is not None
        except RecordWriteError as err:
            done.unwritten.append(str(err))
        except SchemaError:  # a newer mutransfer's files: never replaced here (the plan says so)
            continue
    if written:
        done.lines.append(f"wrote the records of {written} cell(s) from their attempts (a job stopped, or "
                          f"a write failed, between the two): not trained again")


def clean(store: Path, stale_s: float = STALE_S) -> Cleanup:
    """Removes the leftovers of dead jobs and writes the records that finished attempts lack."""
    store = Path(store)
    now = store_now(store)  # the clock that stamped the claims and temp files
    done = Cleanup()
    temps, claims, checkpoints, freed, broken = 0, 0, 0, 0, []
    for folder in (store / RECORDS, store / CLAIMS, *(store / ATTEMPTS).glob("*"), *(store / RUNS).glob("*")):
        for tmp in folder.glob("*.tmp*") if folder.is_dir() else []:
            if _old(tmp, now, stale_s):
                tmp.unlink(missing_ok=True)
                temps += 1
    for path in (store / CLAIMS).glob("*.json"):
        claim = inspect_claim(store, path.stem) if KEY_PATTERN.fullmatch(path.stem) else None
        if isinstance(claim, BrokenClaim):
            if remove_dead(store, claim, stale_s):
                broken.append(f"{claim.path} ({claim.reason})")
        elif claim is not None and not is_live(claim, stale_s, now) and remove_dead(store, claim, stale_s):
            claims += 1
    _promote_finished(store, stale_s, now, done)
    for run in (store / RUNS).glob("*"):
        checkpoint = run / CHECKPOINT
        if (not KEY_PATTERN.fullmatch(run.name) or not checkpoint.is_file() or (run / KEEP).exists()
                or record_status(store, run.name) not in DONE):
            continue
        claim = read_claim(store, run.name)
        if claim is not None and is_live(claim, stale_s, now):
            continue
        freed += checkpoint.stat().st_size
        checkpoint.unlink(missing_ok=True)
        checkpoints += 1
    if checkpoints:
        done.lines.append(f"removed {checkpoints} leftover checkpoint(s) of finished cells "
                          f"({freed / 2**20:,.1f} MiB; keep_checkpoints=true keeps them)")
    if claims:
        done.lines.append(f"removed {claims} claim(s) of runs that died")
    if broken:
        done.lines.append(f"removed {len(broken)} claim file(s) that are no claim, so no run owns their "
                          f"cells: {'; '.join(broken)}")
    if temps:
        done.lines.append(f"removed {temps} temp file(s) of interrupted writes")
    return done
