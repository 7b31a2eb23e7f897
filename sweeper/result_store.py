"""The result store: a directory of one JSON record per cell, safe with many writers on a shared filesystem.

Layout of a store directory::

    records/<key>.json        one record per cell (sweeper.record), replaced atomically
    runs/<key>/               the cell's trainer run dir (checkpoints), so a rerun resumes
    .cache/index-v1.parquet   flat rows of all records, keyed by file name + mtime/size/inode

Writers never touch each other's files and never rewrite the store: a record is written to a
temporary file, fsync'ed and renamed over its final name, so a reader sees either the old record,
the new one, or none, never a partial one. The index cache is rebuilt incrementally by readers and
replaced the same way; it is only a cache, losing it (or racing on it) costs one re-parse.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Iterator, Optional, Union

import pandas as pd

from trainer.config import result_fields

from .record import SCHEMA_VERSION, SchemaError, cell_key, migrate, origin_of

PathLike = Union[str, os.PathLike]

RECORDS = "records"
RUNS = "runs"
_INDEX_VERSION = 1  # bump when flat_row's columns change
_INDEX = Path(".cache") / f"index-v{_INDEX_VERSION}.parquet"

BASE_COLUMNS = [
    "key", "experiment", "source", "status", "val_loss", "train_loss", "steps_done", "tokens",
    "wall_time_s", "tokens_per_s", "finished_at", "device", "precision", "host",
    "error_type", "error_message",
]


class StoreError(ValueError):
    """A store that cannot be read as asked: missing record, corrupt file."""


def records_dir(store_dir: PathLike) -> Path:
    return Path(store_dir) / RECORDS


def record_path(store_dir: PathLike, key: str) -> Path:
    return records_dir(store_dir) / f"{key}.json"


def run_dir(store_dir: PathLike, key: str) -> Path:
    """Where the trainer keeps the cell's checkpoints: stable, so a requeued cell resumes."""
    return Path(store_dir) / RUNS / key


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a unique temp file in the same directory, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _check_writable(record: dict) -> None:
    if record.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(
            f"refusing to write a v{record.get('schema_version')} record: build it with "
            f"sweeper.record.make_record (schema v{SCHEMA_VERSION})"
        )
    if record.get("key") != cell_key(record["config"], origin_of(record.get("source", "trainer"), record.get("experiment"))):
        raise SchemaError(f"record key {record.get('key')!r} does not match its config's cell_key")


def write_record(store_dir: PathLike, record: dict) -> Path:
    """Stores ``record`` (from make_record) atomically as records/<key>.json; returns the path."""
    _check_writable(record)
    path = record_path(store_dir, record["key"])
    atomic_write_bytes(path, json.dumps(record, indent=1, allow_nan=True).encode())
    return path


def _read_file(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StoreError(
            f"corrupt record {path}: {err}; delete it and rerun the sweep to redo that cell"
        ) from None
    return migrate(raw, origin=str(path))


def read_record(store_dir: PathLike, key: str) -> dict:
    """The full record of cell ``key`` (with curves), migrated to the current schema."""
    path = record_path(store_dir, key)
    try:
        return _read_file(path)
    except FileNotFoundError:
        raise StoreError(f"no record for cell {key} in {store_dir}") from None


def record_status(store_dir: PathLike, key: str) -> Optional[str]:
    """Status of cell ``key``'s record, or None when it has none (or only a corrupt one, which a
    rerun replaces). A record of a newer schema raises SchemaError."""
    try:
        return _read_file(record_path(store_dir, key))["status"]
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


def iter_records(store_dir: PathLike) -> Iterator[dict]:
    """Every record in the store, full and migrated, in key order."""
    for name in sorted(_record_files(store_dir)):
        try:
            yield _read_file(records_dir(store_dir) / name)
        except FileNotFoundError:
            continue


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
    row.update(record["config"])
    row.update({f"extra_{k}": v for k, v in (record.get("extra") or {}).items()})
    return row


def _read_index(path: Path) -> dict[str, tuple[tuple[int, int, int], str]]:
    try:
        table = pd.read_parquet(path)
    except Exception:  # missing, or torn by an old crash: it is only a cache
        return {}
    return {
        name: ((int(m), int(s), int(i)), row)
        for name, m, s, i, row in zip(table["file"], table["mtime_ns"], table["size"],
                                      table["inode"], table["row"])
    }


def _write_index(path: Path, index: dict[str, tuple[tuple[int, int, int], str]]) -> None:
    names = sorted(index)
    table = pd.DataFrame({
        "file": names,
        "mtime_ns": [index[n][0][0] for n in names],
        "size": [index[n][0][1] for n in names],
        "inode": [index[n][0][2] for n in names],
        "row": [index[n][1] for n in names],
    })
    try:
        atomic_write_bytes(path, table.to_parquet(index=False))
    except OSError:  # a read-only store is still readable, just not cached
        pass


def load_store(store_dir: PathLike) -> pd.DataFrame:
    """One flat row per record (see flat_row), in key order; an empty store gives an empty frame.

    Only records whose file changed since the cached index are parsed again."""
    store_dir = Path(store_dir)
    if not store_dir.is_dir():
        raise StoreError(f"store {store_dir} does not exist: pass the directory given as store=")
    files = _record_files(store_dir)
    index_path = store_dir / _INDEX
    cached = _read_index(index_path)
    index, fresh = {}, {}
    folder = records_dir(store_dir)
    for name, stamp in files.items():
        hit = cached.get(name)
        if hit is not None and hit[0] == stamp:
            index[name] = hit
            continue
        try:
            fresh[name] = flat_row(_read_file(folder / name))
        except FileNotFoundError:
            continue
        index[name] = (stamp, json.dumps(fresh[name], allow_nan=True))
    if fresh or set(cached) - set(files):
        _write_index(index_path, index)
    rows = [fresh[name] if name in fresh else json.loads(index[name][1]) for name in sorted(index)]
    frame = pd.DataFrame.from_records(rows)
    missing = [c for c in BASE_COLUMNS + result_fields() if c not in frame.columns]
    for column in missing:
        frame[column] = pd.Series(dtype=object)
    return frame
