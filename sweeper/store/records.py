"""The result store: a directory of one JSON record per cell, safe with many writers on a shared filesystem.

Layout of a store directory::

    records/<key>.json        the cell's result: its best attempt (sweeper.store.schema), replaced atomically
    attempts/<key>/<t>-<r>.json  every attempt of the cell, written once and never replaced
    runs/<key>/               the cell's trainer run dir (checkpoints), so a rerun resumes
    claims/<key>.json         the run training the cell now (sweeper.store.claims)
    .cache/index-v3.parquet   flat rows of all records (sweeper.store.index)

A cell's result is its latest ok or diverged attempt; a failed attempt becomes the result only
while the cell has no other: a rerun that fails never hides a finished result.
A cell is finished only when its record reads back: a file the store cannot write is a
RecordWriteError, and an attempt whose record is missing (a failed write, a job killed between the
two) is turned into the record by ``promote`` rather than trained again.

Writers never touch each other's files and never rewrite the store: a record is written to a
temporary file, fsync'ed and renamed over its final name, so a reader sees either the old record,
the new one, or none, never a partial one.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union


if TYPE_CHECKING:
    pass

from trainer.atomic import atomic_write_bytes
from trainer.config import setting_problems

from .schema import (DONE, SCHEMA_VERSION, STATUSES, NewerSchemaError, SchemaError,
                     cell_key, check_key, migrate, origin_of)

PathLike = Union[str, os.PathLike]
STORE_ERROR = 2  # the exit code of every command given a store it cannot read (check_readable_store)

RECORDS = "records"
ATTEMPTS = "attempts"
RUNS = "runs"
_STORE_FOLDERS = (RECORDS, ATTEMPTS, RUNS, "claims", "asked")  # a directory holding none is no store


class StoreError(ValueError):
    """A store that cannot be read as asked: missing record, corrupt file, a path that is no store."""


class RecordWriteError(StoreError):
    """A record (or attempt) the store could not write: a full disk, a quota, a read-only folder.
    The cell is not finished: its result is whatever reads back from records/."""


def _key(key: str) -> str:
    try:
        return check_key(key)
    except ValueError as err:
        raise StoreError(str(err)) from None


def records_dir(store_dir: PathLike) -> Path:
    return Path(store_dir) / RECORDS


def record_path(store_dir: PathLike, key: str) -> Path:
    return records_dir(store_dir) / f"{_key(key)}.json"


def attempts_dir(store_dir: PathLike, key: str) -> Path:
    return Path(store_dir) / ATTEMPTS / _key(key)


def run_dir(store_dir: PathLike, key: str) -> Path:
    """Where the trainer keeps the cell's checkpoints: stable, so a requeued cell resumes."""
    return Path(store_dir) / RUNS / _key(key)


def check_writable_store(store_dir: PathLike) -> None:
    """Raises StoreError unless ``store_dir`` is (or can be made) a directory this process can write
    records into, its records/ and attempts/ folders included: checked before anything trains, not
    after."""
    store_dir = Path(store_dir)
    if store_dir.exists() and not store_dir.is_dir():
        raise StoreError(f"store {store_dir} is a file, not a directory: pass a directory as store=")
    for folder in (store_dir, store_dir / RECORDS, store_dir / ATTEMPTS):
        if folder != store_dir and not folder.exists():
            continue  # made by the first write, in a store that is writable
        probe = folder / f".probe.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise StoreError(f"store {store_dir} is not writable ({folder}: {err.strerror or err})") from None


def check_readable_store(store_dir: PathLike, allow_empty: bool = False) -> Path:
    """The store's path; raises StoreError, with the one line every command that reads a store
    prints, when it is missing, not a store (a file, or a directory none of whose folders is a
    store's, e.g. STORE/records itself) or, unless ``allow_empty``, holds no records yet. Reads only."""
    store_dir = Path(store_dir)
    fix = "pass the directory given as store= to the sweep"
    if not store_dir.exists():
        raise StoreError(f"store {store_dir} does not exist: {fix}")
    if not store_dir.is_dir():
        raise StoreError(f"store {store_dir} is a file, not a store directory: {fix}")
    if any(store_dir.iterdir()) and not any((store_dir / name).is_dir() for name in _STORE_FOLDERS):
        inside = (f" (it looks like the {store_dir.name}/ folder of store {store_dir.parent})"
                  if store_dir.name in _STORE_FOLDERS else "")
        raise StoreError(f"{store_dir} is not a result store: it has no {RECORDS}/ folder{inside}; {fix}")
    if not allow_empty and not record_files(store_dir):
        raise StoreError(f"store {store_dir} holds no records yet")
    return store_dir



def _check_writable(record: dict) -> None:
    if record.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(
            f"refusing to write a v{record.get('schema_version')} record: build it with "
            f"sweeper.store.schema.make_record (schema v{SCHEMA_VERSION})"
        )
    if record.get("key") != cell_key(record["config"], origin_of(record.get("source", "trainer"), record.get("experiment"))):
        raise SchemaError(f"record key {record.get('key')!r} does not match its config's cell_key")


def _plain_json(value):
    """Non-finite floats (a diverged run's losses) as null: records are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    return value


def _attempt_name() -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{now}-{uuid.uuid4().hex[:8]}.json"


def _write(path: Path, data: bytes, what: str) -> None:
    """The store's one write of a result file: a failure (full disk, quota, read-only folder) is a
    RecordWriteError naming the file, never lost."""
    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise RecordWriteError(f"cannot write {what} {path}: {err.strerror or err}") from None


def write_record(store_dir: PathLike, record: dict) -> Path:
    """Stores ``record`` (from make_record) as one more attempt of its cell, and as the cell's result
    (records/<key>.json, replaced atomically) unless it failed and the cell has a finished result.
    Returns the result's path. RecordWriteError when either file cannot be written: an attempt
    written without its record is promoted to it later (``promote``), so the run is not lost."""
    _check_writable(record)
    key = record["key"]
    data = json.dumps(_plain_json(record), indent=1, allow_nan=False).encode()
    attempt = attempts_dir(store_dir, key) / _attempt_name()
    _write(attempt, data, f"cell {key}'s attempt")
    path = record_path(store_dir, key)
    if record["status"] not in DONE:
        try:
            if read_record_file(path, key)["status"] in DONE:
                return path
        except (OSError, StoreError):  # none, or unreadable: this attempt replaces it
            pass
    try:
        _write(path, data, f"cell {key}'s record")
    except RecordWriteError as err:
        raise RecordWriteError(f"{err}; its attempt is kept ({attempt}): the next sweep or "
                               f"`python -m sweeper status` writes the record from it") from None
    return path


def result_of(found: list[dict]) -> Optional[dict]:
    """The cell's result among its attempts (oldest first): the latest ok or diverged one, else the
    latest failed one; None for none."""
    done = [a for a in found if a["status"] in DONE]
    return (done or found or [None])[-1]


def promote(store_dir: PathLike, key: str) -> Optional[dict]:
    """Writes cell ``key``'s record from its attempts where it is missing, unreadable or behind them
    (a job killed, or a write that failed, between the attempt and the record); returns the record
    written, None when there was nothing to write. RecordWriteError when it cannot be written."""
    folder = attempts_dir(store_dir, key)
    found = []
    for name in sorted(attempt_names(store_dir, key)):
        try:
            found.append((name, read_record_file(folder / name, key)))
        except (OSError, StoreError):
            continue
    best = result_of([a for _, a in found])
    if best is None:
        return None
    try:
        if read_record_file(record_path(store_dir, key), key) == best:
            return None
    except (OSError, StoreError):
        pass  # none, or unreadable: the attempts replace it
    name = next(n for n, a in reversed(found) if a is best)
    _write(record_path(store_dir, key), (folder / name).read_bytes(), f"cell {key}'s record")
    return best


def read_record_file(path: Path, key: str) -> dict:
    """A record (or attempt) file of cell ``key``, migrated and checked: a record whose settings
    are another cell's (edited by hand, copied under another name) never stands for ``key``.
    StoreError (or SchemaError) names the file and why."""
    try:
        raw = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(
            f"corrupt record {path}: {err}; delete it and rerun the sweep to redo that cell"
        ) from None
    try:
        record = migrate(raw, origin=str(path))
    except NewerSchemaError:
        raise
    except SchemaError as err:  # not a record at all: as corrupt as a torn file
        raise StoreError(f"corrupt record {path}: {err}") from None
    problems = setting_problems(record["config"])
    if record.get("status") not in STATUSES:
        problems.append(f"status={record.get('status')!r} is none of {', '.join(STATUSES)}")
    if not isinstance(record.get("metrics"), dict) or not isinstance(record.get("curves"), dict):
        problems.append("its metrics or curves are not mappings")
    if not problems:
        holds = cell_key(record["config"], origin_of(record.get("source", "trainer"), record.get("experiment")))
        if record.get("key") != holds or holds != key:
            problems.append(f"its settings are cell {holds}, but it is filed as cell {key}"
                            + (f" and says {record.get('key')}" if record.get("key") not in (key, holds) else "")
                            + " (edited or copied by hand? delete it and rerun the sweep to redo the cell)")
    if problems:
        raise StoreError(f"invalid record {path}: {'; '.join(problems)}")
    return record


def attempts(store_dir: PathLike, key: str) -> list[dict]:
    """Every attempt of cell ``key``, oldest first; a store written before attempts were kept has
    only the cell's record. Unreadable attempt files are left out."""
    folder = attempts_dir(store_dir, key)
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            found.append(read_record_file(path, key))
        except (OSError, StoreError, NewerSchemaError):
            continue
    if not found:
        try:
            found = [read_record(store_dir, key)]
        except StoreError:
            pass
    return found


def attempt_names(store_dir: PathLike, key: str) -> set[str]:
    """File names of the cell's attempts (names sort by time)."""
    try:
        return {e.name for e in os.scandir(attempts_dir(store_dir, key))
                if e.name.endswith(".json") and not e.name.startswith(".")}
    except FileNotFoundError:
        return set()


def newest_attempt(store_dir: PathLike, key: str, before: set[str]) -> Optional[dict]:
    """The cell's newest readable attempt whose file is not in ``before``, or None."""
    for name in sorted(attempt_names(store_dir, key) - before, reverse=True):
        try:
            return read_record_file(attempts_dir(store_dir, key) / name, key)
        except (OSError, StoreError):
            continue
    return None


def recorded_attempt(store_dir: PathLike, key: str, before: set[str]) -> Optional[dict]:
    """The cell's newest attempt whose file is not in ``before``, once its record reads back from
    records/ with it: the record is that attempt, or a finished result that a failed attempt leaves
    in place. None until then: a cell is finished only when its record is readable."""
    attempt = newest_attempt(store_dir, key, before)
    if attempt is None:
        return None
    try:
        record = read_record(store_dir, key)
    except StoreError:
        return None
    if record == attempt or (attempt["status"] not in DONE and record["status"] in DONE):
        return attempt
    return None


def attempt_counts(store_dir: PathLike) -> dict[str, int]:
    """Cell key -> number of attempts on file, for the cells that have attempt files."""
    try:
        folders = list(os.scandir(Path(store_dir) / ATTEMPTS))
    except FileNotFoundError:
        return {}
    return {f.name: sum(1 for e in os.scandir(f.path) if e.name.endswith(".json"))
            for f in folders if f.is_dir()}


def read_record(store_dir: PathLike, key: str) -> dict:
    """The full record of cell ``key`` (with curves), migrated to the current schema."""
    path = record_path(store_dir, key)
    try:
        return read_record_file(path, key)
    except FileNotFoundError:
        raise StoreError(f"no record for cell {key} in {store_dir}") from None


def record_status(store_dir: PathLike, key: str) -> Optional[str]:
    """Status of cell ``key``'s record, or None when it has none (or only a corrupt or invalid one,
    which a rerun replaces). A record of a newer schema raises SchemaError."""
    try:
        return read_record_file(record_path(store_dir, key), key)["status"]
    except (FileNotFoundError, StoreError):
        return None


def record_files(store_dir: PathLike) -> dict[str, tuple[int, int, int]]:
    """File name -> (mtime_ns, size, inode) of every finished record (temp files are dot-named)."""
    try:
        entries = list(os.scandir(records_dir(store_dir)))
    except FileNotFoundError:
        return {}
    files = {}
    for entry in entries:
        if entry.name.endswith(".json") and not entry.name.startswith("."):
            try:
                st = entry.stat()
            except FileNotFoundError:  # replaced between listing and stat: the next load sees it
                continue
            files[entry.name] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return files
