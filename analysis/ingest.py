"""External results (e.g. a paper's tables) -> store records, to set published numbers beside one's runs.

The CSV needs the columns width, depth, lr, param, optimizer, layernorm, val_loss (``nan`` for a
diverged run); any other column is kept in the record's ``extra``. Every row is checked before
anything is written, so a bad file leaves the store untouched.

Records are written with source "ingest" and their experiment, which the store mixes into their
keys: published numbers never overwrite a trained cell or another ingested experiment.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from sweeper.record import make_record
from sweeper.result_store import write_record

from . import AnalysisError

REQUIRED = ("width", "depth", "lr", "param", "optimizer", "layernorm", "val_loss")
# The trainer's choices (trainer.config's contract); analysis may not import the trainer.
PARAMS = ("sp", "mup", "mup_k1")
OPTIMIZERS = ("muon_kimi", "muon", "adamw", "sgd", "lion", "shampoo", "soap", "sophia", "sso")
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class IngestError(AnalysisError):
    """A CSV that cannot be ingested; the message lists every bad row."""


@dataclass(frozen=True)
class Row:
    line: int
    config: dict
    val_loss: float | None  # None: diverged
    extra: dict


def _positive_int(text: str) -> int:
    value = float(text)
    if not value.is_integer() or value < 1:
        raise ValueError("must be a positive integer")
    return int(value)


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
}


def _extra_value(text: str):
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parse_row(line: int, values: dict) -> tuple[Row | None, list[str]]:
    parsed, problems = {}, []
    for name in REQUIRED:
        text = (values.get(name) or "").strip()
        if not text:
            problems.append(f"line {line}: {name} is empty" + (" (write nan for a diverged run)" if name == "val_loss" else ""))
            continue
        try:
            parsed[name] = PARSERS[name](text)
        except ValueError as err:
            reason = str(err) if "must" in str(err) else "is not a number"
            problems.append(f"line {line}: {name}={text!r} {reason}")
    if problems:
        return None, problems
    extra = {k: _extra_value((v or "").strip()) for k, v in values.items() if k not in REQUIRED}
    loss = parsed.pop("val_loss")
    return Row(line, parsed, loss, extra), []


def read_rows(path: Path) -> list[Row]:
    """Parses and checks every row; raises IngestError naming each bad line."""
    try:
        handle = open(path, newline="")
    except FileNotFoundError:
        raise IngestError(f"CSV file {path} does not exist") from None
    with handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise IngestError(f"{path}: line 1 lacks the column(s) {', '.join(missing)}; "
                              f"the header must name {', '.join(REQUIRED)}")
        reader.fieldnames = header
        rows, problems, seen = [], [], {}
        for values in reader:
            if None in values:
                problems.append(f"line {reader.line_num}: more values than the header has columns")
                continue
            row, bad = _parse_row(reader.line_num, values)
            problems += bad
            if row is None:
                continue
            cell = tuple(sorted(row.config.items()))
            if cell in seen:
                problems.append(f"line {row.line}: the same cell as line {seen[cell]} "
                                f"(one row per width, depth, lr, param, optimizer, layernorm)")
                continue
            seen[cell] = row.line
            rows.append(row)
    if problems:
        raise IngestError(f"{path}: {len(problems)} bad row(s), nothing written:\n  " + "\n  ".join(problems))
    if not rows:
        raise IngestError(f"{path} has a header but no rows")
    return rows


def ingest(path: Path, store: Path, experiment: str | None = None) -> list[dict]:
    """Checks every row of ``path``, then writes one record per row into ``store``."""
    experiment = experiment or path.stem
    rows = read_rows(path)
    records = [
        make_record(
            row.config,
            "ok" if row.val_loss is not None else "diverged",
            experiment=experiment,
            source="ingest",
            metrics={"val_loss": row.val_loss},
            extra=row.extra,
        )
        for row in rows
    ]
    for record in records:
        write_record(store, record)
    return records
