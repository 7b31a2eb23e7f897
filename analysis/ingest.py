"""External results (e.g. a paper's tables) -> store records, to set published numbers beside one's runs.

The CSV needs the columns width, depth, lr, param, optimizer, layernorm, val_loss (``nan`` for a
diverged run). A column named like another trainer setting (seed: one row per seed of a cell,
steps, batch_size, ...) gives that setting, and val_loss_se the standard error of val_loss (kept in
``extra`` as the trainer keeps its own; empty: unknown); any other column is kept in the record's
``extra``. A setting no column gives comes from the experiment's composed config when
``--experiment`` names one of conf/experiment/, else it is recorded as unknown (null): never
invented. Every row is checked before anything is written, so a bad file leaves the store untouched.

Records are written with source "ingest" and their experiment, which the store mixes into their
keys: published numbers never overwrite a trained cell or another ingested experiment.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sweeper.grid.experiments import has_experiment, sweep_settings
from sweeper.store import Store, StoreError
from sweeper.store.schema import check_name, make_record, result_config, setting_kinds
from trainer.config import CONF_DIR, setting_problems
from trainer.rules import OPTIMIZERS, PARAMS

from . import AnalysisError
from .sweep_line import compose

REQUIRED = ("width", "depth", "lr", "param", "optimizer", "layernorm", "val_loss")
OPTIONAL = ("val_loss_se",)  # besides the settings: a column that is no setting, yet no extra
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class IngestError(AnalysisError):
    """A CSV that cannot be ingested; the message lists every bad row."""


@dataclass(frozen=True)
class Row:
    line: int
    config: dict
    val_loss: float | None  # None: diverged
    extra: dict


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise ValueError("must be an integer") from None
        return int(value)


def _positive_int(text: str) -> int:
    try:
        value = _integer(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _choice(options):
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text
    return parse


def _boolean(text: str) -> bool:
    if text.lower() not in BOOLEANS:
        raise ValueError("must be true or false")
    return BOOLEANS[text.lower()]


def _seed(text: str) -> int:
    try:
        value = _integer(text)
    except ValueError as err:
        if "must" not in str(err):
            raise  # no number at all: the row says so
        value = -1
    if value < 0:
        raise ValueError("must be an integer >= 0")
    return value


def _standard_error(text: str) -> float | None:
    value = float(text)
    if math.isnan(value):
        return None
    if not 0 <= value < math.inf:
        raise ValueError("must be a finite number >= 0, or empty when unknown")
    return value


def _loss(text: str) -> float | None:
    value = float(text)  # "nan", "inf" parse: both are a diverged run
    if not math.isfinite(value):
        return None
    if value < 0:
        raise ValueError("must be >= 0 (a cross-entropy loss), or nan for a diverged run")
    return value


PARSERS = {
    "width": _positive_int, "depth": _positive_int, "lr": _finite, "param": _choice(PARAMS),
    "optimizer": _choice(OPTIMIZERS), "layernorm": _boolean, "val_loss": _loss,
    "seed": _seed, "val_loss_se": _standard_error,
}
_BY_TYPE: dict[str, Callable[[str], object]] = {"int": _integer, "float": _finite, "bool": _boolean,
                                                 "str": str, "json": json.loads}


def setting_parsers() -> dict[str, Callable[[str], object]]:
    """A parser for every result setting a column may give (the required ones as above)."""
    return {name: PARSERS.get(name, _BY_TYPE[kind]) for name, kind in setting_kinds().items()}


def _extra_value(text: str):
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parse_row(line: int, values: dict, parsers: dict) -> tuple[Row | None, list[str]]:
    parsed, problems = {}, []
    for name in [*REQUIRED, *(k for k in values if (k in parsers or k in OPTIONAL) and k not in REQUIRED)]:
        text = (values.get(name) or "").strip()
        if not text:
            if name in REQUIRED:
                problems.append(f"line {line}: {name} is empty" + (" (write nan for a diverged run)" if name == "val_loss" else ""))
            continue  # an optional setting left empty: unknown for this row
        try:
            parsed[name] = (PARSERS.get(name) or parsers[name])(text)
        except ValueError as err:
            reason = str(err) if "must" in str(err) else "is not a number"
            problems.append(f"line {line}: {name}={text!r} {reason}")
    problems += [f"line {line}: {p}" for p in setting_problems(parsed)]
    if problems:
        return None, problems
    extra = {k: _extra_value((v or "").strip()) for k, v in values.items()
             if k not in REQUIRED and k not in OPTIONAL and k not in parsers}
    if "val_loss_se" in values:
        extra["val_loss_se"] = parsed.pop("val_loss_se", None)
    loss = parsed.pop("val_loss")
    return Row(line, parsed, loss, extra), []


def read_rows(path: Path) -> list[Row]:
    """Parses and checks every row; raises IngestError naming each bad line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: a BOM is no column name
            return _read(path, handle)
    except FileNotFoundError:
        raise IngestError(f"CSV file {path} does not exist") from None
    except IsADirectoryError:
        raise IngestError(f"{path} is a directory, not a CSV file") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise IngestError(f"{path} is not a UTF-8 text CSV ({err})") from None


def _read(path: Path, handle) -> list[Row]:
    reader = csv.DictReader(handle)
    header = [h.strip() for h in reader.fieldnames or []]
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:  # csv.DictReader would keep the last of them, silently
        raise IngestError(f"{path}: line 1 names the column(s) {', '.join(map(repr, twice))} more than once; "
                          f"give each column once")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise IngestError(f"{path}: line 1 lacks the column(s) {', '.join(missing)}; "
                          f"the header must name {', '.join(REQUIRED)}")
    reader.fieldnames = header
    parsers = setting_parsers()
    rows, problems, seen = [], [], {}
    for values in reader:
        if None in values:
            problems.append(f"line {reader.line_num}: more values than the header has columns")
            continue
        row, bad = _parse_row(reader.line_num, values, parsers)
        problems += bad
        if row is None:
            continue
        cell = tuple(sorted(row.config.items()))
        if cell in seen:
            problems.append(f"line {row.line}: the same cell as line {seen[cell]} "
                            f"(one row per width, depth, lr, param, optimizer, layernorm and settings)")
            continue
        seen[cell] = row.line
        rows.append(row)
    if problems:
        raise IngestError(f"{path}: {len(problems)} bad row(s), nothing written:\n  " + "\n  ".join(problems))
    if not rows:
        raise IngestError(f"{path} has a header but no rows")
    return rows


def experiment_settings(experiment: str | None, conf_dir: Path) -> dict:
    """The result settings of ``experiment`` as a sweep composes it; {} when there is no such config."""
    if not has_experiment(experiment, conf_dir):
        return {}
    composed = sweep_settings(compose(experiment, conf_dir))
    settings = result_config(composed)
    if composed.get("precision") == "auto":  # what this machine would resolve, not what the authors ran
        settings["precision"] = None
    return settings


def ingest(path: Path, store: Path, experiment: str | None = None, conf_dir: Path = CONF_DIR) -> list[dict]:
    """Checks every row of ``path``, then writes one record per row into ``store``. Settings a row
    does not give come from ``experiment``'s config (when it names one), else are unknown."""
    name = experiment or path.stem
    try:
        check_name("experiment", name)
    except ValueError as err:
        raise IngestError(f"{err}; name it with --experiment") from None
    rows = read_rows(path)
    settings = experiment_settings(experiment, conf_dir)  # after the rows: a bad CSV fails before composing
    into = Store(store)
    try:
        into.check_writable()
    except StoreError as err:
        raise IngestError(str(err)) from None
    records = [
        make_record(
            {**settings, **row.config},
            "ok" if row.val_loss is not None else "diverged",
            experiment=name,
            source="ingest",
            metrics={"val_loss": row.val_loss},
            extra=row.extra,
        )
        for row in rows
    ]
    try:
        for record in records:
            into.finish(record)
    except StoreError as err:  # RecordWriteError: a full disk or a folder turned read-only
        raise IngestError(f"{err}\nrerun the ingest once the store is writable") from None
    return records
