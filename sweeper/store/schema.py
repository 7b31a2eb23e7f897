"""The store record: one JSON document per cell, the contract between sweeper and analysis.

A cell's key is a hash of the settings that change its result (``trainer.config.result_fields()``),
normalised to the TrainConfig defaults and types, so ``lr=-8`` and ``lr=-8.0`` name the same cell and
paths, threads or the launcher never do. The settings keyed in schema v1 (``V1_KEY_FIELDS``) are
always hashed; a setting added since is hashed only when it differs from its default, so adding a
setting (at a default that keeps the old behaviour) never changes an existing key. An unknown setting
(None, in ingested records) hashes as its default, as v1 filled it in.

Schema history (``migrate`` reads every older layout):
  v0  flat: {"config", "status", "val_loss", "train_loss", "steps_done", "tokens", "wall_time_s",
      "tokens_per_s", "device", "precision", "host", "train_curve", "val_curve", "error": str|None,
      "finished_at"}; no "schema_version" (or 0).
  v1  nested metrics / curves / timings / runtime / error, as built by ``make_record``.
  v2  as v1; an ingested record's settings that its CSV did not give are None (unknown), where v1
      invented the trainer's defaults (the v1 CSV gave exactly ``INGEST_V1_COLUMNS``). Keys unchanged.
Reading any version, a setting the record lacks (added after it was written) reads as what runs then
did (trainer.config.recorded_default: its default, or fp32 for precision), or as unknown (None) in an
ingested record.

``precision`` is the one setting a run resolves: a config's ``auto`` is keyed as the precision its run
takes (bf16 on CUDA, fp32 on a CPU; trainer.config.resolve_precision), and the key hashes it only
where it is not fp32, so every record from before precision was a result setting keeps its key.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import socket
import typing
from typing import Any, Optional

from trainer.config import TrainConfig, device_type, recorded_default, resolve_precision, result_fields

SCHEMA_VERSION = 2
STATUSES = ("ok", "diverged", "failed")
DONE = ("ok", "diverged")  # finished: the cell is not run again (unless force), a failure never hides it
SOURCES = ("trainer", "ingest")
KEY_LENGTH = 16  # hex digits of sha256: 64 bits, no collision in any plausible store
KEY_PATTERN = re.compile(rf"[0-9a-f]{{{KEY_LENGTH}}}")
# Names that go into records and from there into paths, tables and printed shell commands.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
# The result settings of schema v1, every one in every v1 key: frozen, whatever TrainConfig gains.
V1_KEY_FIELDS = (
    "width", "depth", "lr", "param", "optimizer", "layernorm", "seed", "base_width", "base_depth",
    "head_dim", "init_std", "weight_decay", "adam_eps", "adam_beta1", "adam_beta2", "momentum",
    "dataset", "tokenizer", "vocab_size", "batch_size", "seq_len", "steps", "warmup_steps",
    "lr_floor", "grad_clip", "eval_interval", "eval_batches", "divergence_factor",
)
INGEST_V1_COLUMNS = ("width", "depth", "lr", "param", "optimizer", "layernorm")

_METRIC_KEYS = ("val_loss", "train_loss", "steps_done", "tokens")
_ERROR_KEYS = ("type", "message", "log_tail", "slurm_state", "job_id")
_RUNTIME_KEYS = ("device", "precision", "host", "versions", "slurm")


class SchemaError(ValueError):
    """A record this code cannot read (newer schema, or not a record at all)."""


class NewerSchemaError(SchemaError):
    """A record written by a newer mutransfer: this one must not read or replace it."""


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Brings a value to its field's type so equal settings hash equally (-8 == -8.0)."""
    if kind is Any and isinstance(value, str):  # a mapping as the store's frame holds it: JSON text
        value = json.loads(value)
    if value is None or (kind is Any and value == {}):  # model_args={}: no arguments, as None
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


def setting_kinds() -> dict[str, str]:
    """Each result setting's type as a word: int, float, bool or str."""
    def word(kind) -> str:  # Optional[int] -> int; a mapping (model_args, model_roles): json
        if kind is Any:
            return "json"
        return next(k for k in (*typing.get_args(kind), kind) if k is not type(None)).__name__

    return {name: word(kind) for name, kind in _field_types().items() if name in result_fields()}


def result_config(config: dict, unknown_missing: bool = False) -> dict:
    """The result-changing settings of a config, types normalised, missing ones filled with their
    TrainConfig default (or with None, unknown, when ``unknown_missing``: ingested records).

    Keys that are not trainer settings are ignored (a resolved Hydra config carries more)."""
    defaults = TrainConfig().to_dict()
    types = _field_types()
    values = {
        name: _coerce(name, config.get(name, None if unknown_missing else defaults[name]), types[name])
        for name in result_fields()
    }
    if values["precision"] == "auto":
        values["precision"] = resolve_precision("auto", device_type(config.get("device") or "auto"))
    return values


def key_settings(config: dict) -> dict:
    """What a key hashes: every v1 setting, and each later one only where it differs from what runs
    did before it existed (trainer.config.recorded_default)."""
    settings = {}
    for name, value in result_config(config).items():
        value = recorded_default(name) if value is None else value
        if name in V1_KEY_FIELDS or value != recorded_default(name):
            settings[name] = value
    return settings


def check_name(kind: str, name: Optional[str]) -> None:
    """Raises ValueError unless ``name`` (an experiment) is plain: it ends up in file names, tables
    and shell commands."""
    if name is not None and not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} may only use letters, digits, '_', '.' and '-'")


def check_key(key: str) -> str:
    """``key`` when it is a cell key (16 hex digits), else ValueError: keys become paths."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise ValueError(f"{key!r} is not a cell key (16 hex digits, column `key` of the store)")
    return key


def origin_of(source: str, experiment: Optional[str]) -> Optional[str]:
    """What besides the settings names a record: nothing for a trained cell (the same settings give
    the same result whichever experiment asked), the source and experiment for ingested numbers, so
    published results never overwrite one's own runs or another ingest."""
    return None if source == "trainer" else f"{source}:{experiment}"


def cell_key(config: dict, origin: Optional[str] = None) -> str:
    """Stable identity of a cell: sha256 of its canonical result settings (first 16 hex digits)."""
    identity = key_settings(config) if origin is None else {"config": key_settings(config), "origin": origin}
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
    check_name("experiment", experiment)
    config = result_config(config, unknown_missing=source == "ingest")
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


def _from_v1(old: dict) -> dict:
    if old.get("source") != "ingest":
        return {**old, "schema_version": SCHEMA_VERSION}
    config = {k: (v if k in INGEST_V1_COLUMNS else None) for k, v in old["config"].items()}
    return {**old, "schema_version": SCHEMA_VERSION, "config": config}


_MIGRATIONS = {0: _from_v0, 1: _from_v1}  # version -> function lifting it to the current schema


def _with_every_setting(record: dict) -> dict:
    """A record written before a setting existed reads as what runs did then (unknown if ingested)."""
    missing = [name for name in result_fields() if name not in record["config"]]
    if not missing:
        return record
    ingested = record.get("source") == "ingest"
    config = {**record["config"], **{name: None if ingested else recorded_default(name) for name in missing}}
    return {**record, "config": config}


def migrate(record: Any, origin: str = "record") -> dict:
    """Returns ``record`` in the current schema; raises SchemaError for newer or unreadable records."""
    if not isinstance(record, dict) or "config" not in record or "status" not in record:
        raise SchemaError(f"{origin} is not a store record (no config/status)")
    version = record.get("schema_version", 0)
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise NewerSchemaError(
            f"{origin} was written with record schema v{version}, but this mutransfer reads up to "
            f"v{SCHEMA_VERSION}: update mutransfer to read this store"
        )
    if version != SCHEMA_VERSION and version not in _MIGRATIONS:
        raise SchemaError(f"{origin} has unknown record schema version {version!r}")
    if not isinstance(record["config"], dict):
        raise SchemaError(f"{origin} is not a store record (its config is not a mapping)")
    if version != SCHEMA_VERSION:
        record = _MIGRATIONS[version](record)
    return _with_every_setting(record)
