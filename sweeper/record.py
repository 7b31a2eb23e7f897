"""The store record: one JSON document per finished cell, the contract between sweeper and analysis.

A cell's key is a hash of the settings that change its result (``trainer.config.result_fields()``),
normalised to the TrainConfig defaults and types, so ``lr=-8`` and ``lr=-8.0`` name the same cell and
paths, threads or the launcher never do.

Schema history (``migrate`` reads every older layout):
  v0  flat: {"config", "status", "val_loss", "train_loss", "steps_done", "tokens", "wall_time_s",
      "tokens_per_s", "device", "precision", "host", "train_curve", "val_curve", "error": str|None,
      "finished_at"}; no "schema_version" (or 0).
  v1  nested metrics / curves / timings / runtime / error, as built by ``make_record``.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import socket
import typing
from typing import Any, Optional

from trainer.config import TrainConfig, result_fields

SCHEMA_VERSION = 1
STATUSES = ("ok", "diverged", "failed")
SOURCES = ("trainer", "ingest")
KEY_LENGTH = 16  # hex digits of sha256: 64 bits, no collision in any plausible store

_METRIC_KEYS = ("val_loss", "train_loss", "steps_done", "tokens")
_ERROR_KEYS = ("type", "message", "log_tail", "slurm_state", "job_id")
_RUNTIME_KEYS = ("device", "precision", "host", "versions", "slurm")


class SchemaError(ValueError):
    """A record this code cannot read (newer schema, or not a record at all)."""


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Brings a value to its field's type so equal settings hash equally (-8 == -8.0)."""
    if value is None:
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"setting '{name}'={value!r} must be true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or float(value) != int(value):
            raise ValueError(f"setting '{name}'={value!r} must be an integer")
        return int(value)
    if kind is float:
        return float(value)
    return value


def result_config(config: dict) -> dict:
    """The result-changing settings of a config, with TrainConfig defaults filled in and types normalised.

    Keys that are not trainer settings are ignored (a resolved Hydra config carries more)."""
    defaults = TrainConfig().to_dict()
    types = _field_types()
    return {
        name: _coerce(name, config.get(name, defaults[name]), types[name])
        for name in result_fields()
    }


def origin_of(source: str, experiment: Optional[str]) -> Optional[str]:
    """What besides the settings names a record: nothing for a trained cell (the same settings give
    the same result whichever experiment asked), the source and experiment for ingested numbers, so
    published results never overwrite one's own runs or another ingest."""
    return None if source == "trainer" else f"{source}:{experiment}"


def cell_key(config: dict, origin: Optional[str] = None) -> str:
    """Stable identity of a cell: sha256 of its canonical result settings (first 16 hex digits)."""
    identity = result_config(config) if origin is None else {"config": result_config(config), "origin": origin}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_LENGTH]


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _filled(given: Optional[dict], keys: tuple[str, ...], defaults: Optional[dict] = None) -> dict:
    out = {k: None for k in keys}
    out.update(defaults or {})
    out.update(given or {})
    return out


def make_record(
    config: dict,
    status: str,
    *,
    experiment: Optional[str] = None,
    source: str = "trainer",
    metrics: Optional[dict] = None,
    curves: Optional[dict] = None,
    timings: Optional[dict] = None,
    runtime: Optional[dict] = None,
    error: Optional[dict] = None,
    extra: Optional[dict] = None,
) -> dict:
    """Builds a complete, valid current-schema record; missing parts are filled with nulls."""
    if status not in STATUSES:
        raise ValueError(f"status={status!r}: must be one of {', '.join(STATUSES)}")
    if source not in SOURCES:
        raise ValueError(f"source={source!r}: must be one of {', '.join(SOURCES)}")
    config = result_config(config)
    return {
        "schema_version": SCHEMA_VERSION,
        "key": cell_key(config, origin_of(source, experiment)),
        "experiment": experiment,
        "source": source,
        "config": config,
        "status": status,
        "metrics": _filled(metrics, _METRIC_KEYS),
        "curves": {"train": [], "val": [], **(curves or {})},
        "timings": _filled(timings, ("wall_time_s", "tokens_per_s", "finished_at"),
                           {"finished_at": now_iso()}),
        "runtime": _filled(runtime, _RUNTIME_KEYS, {"host": socket.gethostname(), "versions": {}}),
        "error": None if error is None else _filled(error, _ERROR_KEYS),
        "extra": dict(extra or {}),
    }


def _from_v0(old: dict) -> dict:
    error = old.get("error")
    return make_record(
        old["config"],
        old["status"],
        experiment=old.get("experiment"),
        metrics={k: old.get(k) for k in _METRIC_KEYS},
        curves={"train": old.get("train_curve") or [], "val": old.get("val_curve") or []},
        timings={"wall_time_s": old.get("wall_time_s"), "tokens_per_s": old.get("tokens_per_s"),
                 "finished_at": old.get("finished_at")},
        runtime={"device": old.get("device"), "precision": old.get("precision"),
                 "host": old.get("host")},
        error=None if error is None else {"type": "Error", "message": str(error)},
    )


_MIGRATIONS = {0: _from_v0}  # version -> function lifting it to the current schema


def migrate(record: Any, origin: str = "record") -> dict:
    """Returns ``record`` in the current schema; raises SchemaError for newer or unreadable records."""
    if not isinstance(record, dict) or "config" not in record or "status" not in record:
        raise SchemaError(f"{origin} is not a store record (no config/status)")
    version = record.get("schema_version", 0)
    if version == SCHEMA_VERSION:
        return record
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise SchemaError(
            f"{origin} was written with record schema v{version}, but this mutransfer reads up to "
            f"v{SCHEMA_VERSION}: update mutransfer to read this store"
        )
    if version not in _MIGRATIONS:
        raise SchemaError(f"{origin} has unknown record schema version {version!r}")
    return _MIGRATIONS[version](record)
