"""The store as a table: one flat row per record (load_store), kept fast by a Parquet index cache.

``STORE/.cache/index-v3.parquet`` holds the flat rows of all records, keyed by file name and
mtime/size/inode: a load parses only the records whose file changed since. The index is rebuilt
incrementally by readers and replaced atomically; it is only a cache, losing it (or racing on it)
costs one re-parse.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import pyarrow as pa

from trainer.atomic import atomic_write_bytes
from trainer.config import result_fields

from .records import PathLike, StoreError, read_record_file, record_files, records_dir
from .schema import KEY_PATTERN, SchemaError

_INDEX_VERSION = 3  # bump when flat_row's columns, the index layout or what reads as a record change
_INDEX = Path(".cache") / f"index-v{_INDEX_VERSION}.parquet"

BASE_COLUMNS = [
    "key", "experiment", "source", "status", "val_loss", "train_loss", "steps_done", "tokens",
    "wall_time_s", "tokens_per_s", "finished_at", "device", "precision", "host",
    "error_type", "error_message",
]


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
            record = read_record_file(folder / name, key)
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
    files = record_files(store_dir)
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
