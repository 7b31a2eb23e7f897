"""The result store: a directory of one JSON record per cell, safe with many writers on a shared filesystem.

Layout of a store directory::

    records/<key>.json        the cell's result: its best attempt (sweeper.record), replaced atomically
    attempts/<key>/<t>-<r>.json  every attempt of the cell, written once and never replaced
    runs/<key>/               the cell's trainer run dir (checkpoints), so a rerun resumes
    claims/<key>.json         the run training the cell now (sweeper.claims)
    .cache/index-v2.parquet   flat rows of all records, keyed by file name + mtime/size/inode

A cell's result is its latest ok or diverged attempt; a failed attempt becomes the result only
while the cell has no other: a rerun that fails never hides a finished result.
A cell is finished only when its record reads back: a file the store cannot write is a
RecordWriteError, and an attempt whose record is missing (a failed write, a job killed between the
two) is turned into the record by ``promote`` rather than trained again.

Writers never touch each other's files and never rewrite the store: a record is written to a
temporary file, fsync'ed and renamed over its final name, so a reader sees either the old record,
the new one, or none, never a partial one. The index cache is rebuilt incrementally by readers and
replaced the same way; it is only a cache, losing it (or racing on it) costs one re-parse.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import pyarrow as pa

from trainer.atomic import atomic_write_bytes
from trainer.config import result_fields, setting_problems

from .record import (DONE, KEY_PATTERN, SCHEMA_VERSION, STATUSES, NewerSchemaError, SchemaError,
                     cell_key, check_key, migrate, origin_of)

PathLike = Union[str, os.PathLike]
STORE_ERROR = 2  # the exit code of every command given a store it cannot read (check_readable_store)

RECORDS = "records"
ATTEMPTS = "attempts"
RUNS = "runs"
_INDEX_VERSION = 3  # bump when flat_row's columns, the index layout or what reads as a record change
_INDEX = Path(".cache") / f"index-v{_INDEX_VERSION}.parquet"
_STORE_FOLDERS = (RECORDS, ATTEMPTS, RUNS, "claims", "asked")  # a directory holding none is no store

BASE_COLUMNS = [
    "key", "experiment", "source", "status", "val_loss", "train_loss", "steps_done", "tokens",
    "wall_time_s", "tokens_per_s", "finished_at", "device", "precision", "host",
    "error_type", "error_message",
]


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
    if not allow_empty and not _record_files(store_dir):
        raise StoreError(f"store {store_dir} holds no records yet")
    return store_dir



def _check_writable(record: dict) -> None:
    if record.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(
            f"refusing to write a v{record.get('schema_version')} record: build it with "
            f"sweeper.record.make_record (schema v{SCHEMA_VERSION})"
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
            if _read_file(path, key)["status"] in DONE:
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
            found.append((name, _read_file(folder / name, key)))
        except (OSError, StoreError):
            continue
    best = result_of([a for _, a in found])
    if best is None:
        return None
    try:
        if _read_file(record_path(store_dir, key), key) == best:
            return None
    except (OSError, StoreError):
        pass  # none, or unreadable: the attempts replace it
    name = next(n for n, a in reversed(found) if a is best)
    _write(record_path(store_dir, key), (folder / name).read_bytes(), f"cell {key}'s record")
    return best


def _read_file(path: Path, key: str) -> dict:
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
            found.append(_read_file(path, key))
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
            return _read_file(attempts_dir(store_dir, key) / name, key)
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
        return _read_file(path, key)
    except FileNotFoundError:
        raise StoreError(f"no record for cell {key} in {store_dir}") from None


def record_status(store_dir: PathLike, key: str) -> Optional[str]:
    """Status of cell ``key``'s record, or None when it has none (or only a corrupt or invalid one,
    which a rerun replaces). A record of a newer schema raises SchemaError."""
    try:
        return _read_file(record_path(store_dir, key), key)["status"]
    except (FileNotFoundError, StoreError):
        return None


def _record_files(store_dir: PathLike) -> dict[str, tuple[int, int, int]]:
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


def flat_row(record: dict) -> dict:
    """One flat row of a record (no curves): the columns load_store promises."""
    metrics, timings, runtime = record["metrics"], record["timings"], record["runtime"]
    error = record.get("error") or {}
    row = {
        "key": record["key"],
        "experiment": record.get("experiment"),
        "source": record.get("source"),
        "status": record["status"],
        **{k: metrics.get(k) for k in ("val_loss", "train_loss", "steps_done", "tokens")},
        **{k: timings.get(k) for k in ("wall_time_s", "tokens_per_s", "finished_at")},
        **{k: runtime.get(k) for k in ("device", "precision", "host")},
        "error_type": error.get("type"),
        "error_message": error.get("message"),
    }
    # a mapping setting (model_args, model_roles) as JSON text: one column type for Arrow
    row.update({k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v
                for k, v in record["config"].items()})
    row.update({f"extra_{k}": v for k, v in (record.get("extra") or {}).items()})
    return row


# Index columns that are not part of the row: which file, and its stamp when it was read.
_STAMP = ["_file", "_mtime_ns", "_size", "_inode"]
_JSON_COLUMNS = b"mutransfer.json_columns"  # Parquet metadata: columns kept as JSON text
_PARALLEL_MIN = 1000  # fresh records per worker below which a process pool costs more than it saves


def _to_table(frame: pd.DataFrame) -> "pa.Table":
    """Typed columns where Arrow can type them; a column of mixed values (an extra field that is a
    number in one record and text in another) is kept as JSON text, named in the metadata."""
    import pyarrow as pa

    frame = frame.copy()
    as_json = []
    for column in frame.columns[frame.dtypes == object]:
        try:
            pa.array(frame[column], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            frame[column] = [json.dumps(v, allow_nan=True) for v in frame[column]]
            as_json.append(column)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return table.replace_schema_metadata({**table.schema.metadata,
                                          _JSON_COLUMNS: json.dumps(as_json).encode()})


def _to_frame(table: "pa.Table") -> pd.DataFrame:
    """The frame load_store returns: always through Arrow, so a fresh parse and the cached index
    give the same dtypes."""
    frame = table.to_pandas()
    for column in json.loads((table.schema.metadata or {}).get(_JSON_COLUMNS, b"[]")):
        frame[column] = [json.loads(v) for v in frame[column]]
    return frame


def _read_index(path: Path) -> Optional[pd.DataFrame]:
    import pyarrow.parquet as pq

    try:
        return _to_frame(pq.read_table(path))
    except Exception:  # missing, or torn by an old crash: it is only a cache
        return None


def _write_index(path: Path, table: "pa.Table") -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    try:
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
        for stale in path.parent.glob("index-v*.parquet"):  # left by an older mutransfer
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError:  # a read-only store is still readable, just not cached
        pass


def _flat_rows(folder: Path, files: list[tuple[str, tuple[int, int, int]]]) -> list[dict]:
    """Index rows of these record files; a file gone since it was listed is left out, and one that
    cannot be read gives a row with only "_file" and "_skipped" (the reason)."""
    rows = []
    for name, stamp in files:
        try:
            key = name.removesuffix(".json")
            if not KEY_PATTERN.fullmatch(key):
                raise StoreError(f"invalid record {folder / name}: its name is no cell key")
            record = _read_file(folder / name, key)
            row = flat_row(record)
        except FileNotFoundError:
            continue
        except (StoreError, SchemaError) as err:
            rows.append({"_file": name, "_skipped": str(err)})
            continue
        rows.append({**dict(zip(_STAMP, (name, *stamp))), **row})
    return rows


def _parse(folder: Path, files: list[tuple[str, tuple[int, int, int]]]) -> list[dict]:
    """_flat_rows, split over the CPUs this process may use when there are many files: decoding
    the records' JSON (curves mostly) is what a cold load of a big store spends its time on.
    Forked workers only read files and decode JSON; where fork is not the platform's way (macOS,
    Windows) it stays serial."""
    import multiprocessing
    import sys

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    workers = min(cpus, len(files) // _PARALLEL_MIN)
    if workers < 2 or not sys.platform.startswith("linux"):
        return _flat_rows(folder, files)
    from concurrent.futures import ProcessPoolExecutor

    chunks = [files[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return [row for part in pool.map(_flat_rows, [folder] * workers, chunks) for row in part]


def load_store(store_dir: PathLike, strict: bool = False) -> pd.DataFrame:
    """One flat row per record (see flat_row), in key order; an empty store gives an empty frame.

    A record that cannot be read (corrupt, empty, out of range, a newer schema) is left out and
    listed in ``frame.attrs["skipped"]`` as (path, reason); ``strict`` raises StoreError instead.
    Only records whose file changed since the cached index are parsed again."""
    store_dir = Path(store_dir)
    if not store_dir.is_dir():
        raise StoreError(f"store {store_dir} does not exist: pass the directory given as store=")
    files = _record_files(store_dir)
    index_path = store_dir / _INDEX
    cached = _read_index(index_path)
    if cached is not None and set(_STAMP) <= set(cached.columns):
        stamps = zip(cached["_mtime_ns"], cached["_size"], cached["_inode"])
        current = [files.get(name) == tuple(map(int, stamp))
                   for name, stamp in zip(cached["_file"], stamps)]
        kept = cached[np.array(current, dtype=bool)]  # (an empty list would select columns)
    else:
        kept = pd.DataFrame(columns=_STAMP)
    have = set(kept["_file"])
    parsed = _parse(records_dir(store_dir), sorted((n, s) for n, s in files.items() if n not in have))
    fresh = [row for row in parsed if "_skipped" not in row]
    skipped = [(str(records_dir(store_dir) / row["_file"]), row["_skipped"])
               for row in parsed if "_skipped" in row]
    if skipped and strict:
        raise StoreError(f"{len(skipped)} unreadable record(s) in {store_dir}:\n  "
                         + "\n  ".join(reason for _, reason in skipped))
    frame = kept
    if fresh:
        fresh_frame = pd.DataFrame.from_records(fresh)
        frame = fresh_frame if kept.empty else pd.concat([kept, fresh_frame], ignore_index=True)
    if fresh or cached is None or len(kept) != len(cached):
        table = _to_table(frame.sort_values("_file", ignore_index=True))
        if files:  # only in a store that holds records: a reader pointed elsewhere writes nothing
            _write_index(index_path, table)
        frame = _to_frame(table)
    frame = frame.drop(columns=_STAMP)
    missing = [c for c in BASE_COLUMNS + result_fields() if c not in frame.columns]
    for column in missing:
        frame[column] = pd.Series(dtype=object)
    frame.attrs["skipped"] = skipped
    return frame
