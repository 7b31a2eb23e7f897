"""Store rows -> one grid per experiment group (sizes x log2 eta_base), like the paper's Tables 8-13.

Groups: every config column that varies across the store, except the size axes, lr and seed, splits
the records into groups (plus experiment and source when they vary, so published numbers sit beside
one's own runs instead of mixing with them). Within a group each sweep line -- the widths at one
depth, or the depths at one width -- is one table.

Seeds are averaged: a cell is the mean final validation loss over its seeds, as the paper reports one
number per cell; the mean is the less noisy argmin. The table keeps each seed's loss too, their
spread (sample standard deviation) and the standard error of the mean from the runs' recorded
evaluation standard errors, for analysis.confidence. A cell where any seed diverged counts as
diverged (an LR that sometimes explodes is not one to pick), and failed runs are left out (blank if
nothing else ran there).
"""
from __future__ import annotations

import hashlib
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweeper.store.index import BASE_COLUMNS

from .optima import RowOptimum, row_optimum

SIZE_AXES = ("width", "depth")
LR, SEED = "lr", "seed"
# The final eval's standard error: a trainer or ingested record keeps it in extra (the store's column
# extra_val_loss_se); load_store makes no column of any other metric.
LOSS_SE_COLUMNS = ("extra_val_loss_se",)
TITLE_FIRST = ("experiment", "source", "param", "optimizer", "layernorm")


@dataclass
class Table:
    title: dict  # the values fixed in this table, e.g. {"param": "sp", ..., "depth": 4}
    axis: str  # the size axis of the rows: "width" | "depth"
    sizes: np.ndarray
    lrs: np.ndarray
    loss: np.ndarray  # mean final val loss over seeds; NaN where missing or diverged
    diverged: np.ndarray  # bool, same shape
    runs: np.ndarray  # runs (seeds) per cell (ok + diverged); 0 where missing
    failed: int  # failed runs left out
    spread: np.ndarray  # standard deviation over the seeds; NaN below two finite ones
    se: np.ndarray  # standard error of the mean from the runs' recorded ones; NaN: unknown
    seeds: np.ndarray  # the seed values of the table
    seed_loss: np.ndarray  # (seeds, sizes, lrs): each seed's loss; NaN: missing or diverged
    seed_diverged: np.ndarray  # (seeds, sizes, lrs), bool

    @property
    def name(self) -> str:
        return ", ".join(f"{k}={value_text(v)}" for k, v in self.title.items())

    @property
    def slug(self) -> str:
        """A file name: the title, shortened with a hash when long (file names stop at 255 bytes)."""
        slug = re.sub(r"[^A-Za-z0-9.=-]+", "_", "_".join(f"{k}={value_text(v)}" for k, v in self.title.items()))
        if len(slug) > 160:
            slug = f"{slug[:150]}_{hashlib.sha256(slug.encode()).hexdigest()[:8]}"
        return slug


PARAM_NAMES = {"sp": "SP", "mup": "μP", "mup_k1": "μP (k=1)"}  # as the paper writes them


def param_name(param) -> str:
    return PARAM_NAMES.get(str(param), str(param))


def caption(table: Table) -> str:
    """The table's name for a reader, its parameterization first: 'μP, optimizer=muon_kimi, depth=2'."""
    rest = [f"{k}={value_text(v)}" for k, v in table.title.items() if k != "param"]
    return ", ".join([param_name(table.title["param"])] * ("param" in table.title) + rest)


def value_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The columns load_store fills from a record's config: not its run columns, not extra_*."""
    return [c for c in frame.columns if c not in BASE_COLUMNS and not c.startswith("extra_")]


def group_columns(frame: pd.DataFrame) -> list[str]:
    """Config columns (and experiment, source) that vary across records, except sizes, lr and seed.

    A setting that is only known or unknown (ingested rows leave settings unknown) does not vary:
    the rows that know it are told apart from the others by their source or experiment already."""
    candidates = [c for c in ("experiment", "source") if c in frame.columns] + [
        c for c in config_columns(frame) if c not in (*SIZE_AXES, LR, SEED)
    ]
    return [c for c in candidates if frame[c].nunique() > 1 or (
        c in ("experiment", "source") and frame[c].nunique(dropna=False) > 1)]


def loss_se(frame: pd.DataFrame) -> pd.Series:
    """Each record's recorded standard error of its final val loss; NaN where it has none."""
    se = pd.Series(np.nan, index=frame.index)
    for column in LOSS_SE_COLUMNS:
        if column in frame.columns:
            se = se.fillna(pd.to_numeric(frame[column], errors="coerce"))
    return se


def run_frame(frame: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    """One row per run: its group, size, lr, seed, loss (NaN unless ok), standard error and status."""
    status, loss = frame["status"], frame["val_loss"].astype(float)
    ok = (status == "ok") & loss.notna()
    diverged = (status == "diverged") | ((status == "ok") & loss.isna())
    seed = frame[SEED].fillna(0).astype(int) if SEED in frame.columns else 0
    return frame[[*groups, *SIZE_AXES, LR]].assign(
        seed=seed, loss=loss.where(ok), se=loss_se(frame).where(ok), ok=ok, diverged=diverged,
        failed=~(ok | diverged))


def build_tables(frame: pd.DataFrame) -> list[Table]:
    """One table per (group, sweep line), ordered by title."""
    missing = [c for c in (*SIZE_AXES, LR, "status", "val_loss") if c not in frame.columns]
    if missing:
        raise ValueError(f"store rows lack the column(s) {missing}: is this a result store?")
    frame = frame[frame[LR].notna()]
    groups = group_columns(frame)
    constant = {c: frame[c].iloc[0] for c in TITLE_FIRST if c in frame.columns and c not in groups
                and c not in ("experiment", "source") and not _missing(frame[c].iloc[0])}
    runs = run_frame(frame, groups)
    tables = []
    parts = runs.groupby(groups, dropna=False, sort=False) if groups else [((), runs)]
    for _, part in parts:
        first = part.iloc[0]
        title = {**constant, **{c: first[c] for c in groups if not _missing(first[c])}}
        title = {c: title[c] for c in [*TITLE_FIRST, *groups] if c in title}  # a stable order
        for axis, fixed, line in _sweep_lines(part):
            tables.append(line_table(line, axis, {**title, fixed: line[fixed].iloc[0]}))
    tables.sort(key=lambda t: [(k, _sort_key(v)) for k, v in t.title.items()])
    return tables


def row_optima(table: Table) -> list[RowOptimum]:
    """Each row's optimum (analysis.optima.row_optimum), as the report and ``analysis next`` take it."""
    return [row_optimum(s, table.lrs, table.loss[r], table.diverged[r]) for r, s in enumerate(table.sizes)]


def _sort_key(value):
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _sweep_lines(part: pd.DataFrame):
    """(axis, fixed axis, cells) for each line of >= 2 sizes; cells on no such line as single rows."""
    covered = pd.Series(False, index=part.index)
    for axis, fixed in (("width", "depth"), ("depth", "width")):
        for _, line in part.groupby(fixed, sort=True):
            if line[axis].nunique() >= 2:
                covered[line.index] = True
                yield axis, fixed, line
    for _, line in part[~covered].groupby("depth", sort=True):
        yield "width", "depth", line


def line_table(line: pd.DataFrame, axis: str, title: dict) -> Table:
    """The table of one sweep line's runs (run_frame's columns): per seed, then over the seeds."""
    sizes, lrs = np.unique(line[axis].to_numpy(float)), np.unique(line[LR].to_numpy(float))  # failed: blank
    failed = int(line["failed"].sum())
    line = line[~line["failed"]]
    size_of, lr_of, seed_of = line[axis].to_numpy(float), line[LR].to_numpy(float), line[SEED].to_numpy(int)
    seeds = np.unique(seed_of)
    at = (np.searchsorted(seeds, seed_of), np.searchsorted(sizes, size_of), np.searchsorted(lrs, lr_of))
    shape = (len(seeds), len(sizes), len(lrs))
    seed_loss, seed_se = np.full(shape, np.nan), np.full(shape, np.nan)
    seed_diverged, ran = np.zeros(shape, bool), np.zeros(shape, bool)
    seed_loss[at], seed_se[at] = line["loss"].to_numpy(float), line["se"].to_numpy(float)
    seed_diverged[at], ran[at] = line["diverged"].to_numpy(bool), True
    diverged = seed_diverged.any(axis=0)
    finite = np.isfinite(seed_loss).sum(axis=0)
    with warnings.catch_warnings():  # all-NaN cells (missing, diverged) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        loss = np.nanmean(seed_loss, axis=0)
        spread = np.where(finite >= 2, np.nanstd(seed_loss, axis=0, ddof=1), np.nan)
    # The mean's standard error from the runs' own: unknown where any finite run lacks one.
    se_known = ~(np.isfinite(seed_loss) & np.isnan(seed_se)).any(axis=0)
    se = np.where(se_known & (finite > 0), np.sqrt(np.nansum(seed_se**2, axis=0)) / np.maximum(finite, 1), np.nan)
    loss[diverged] = spread[diverged] = se[diverged] = np.nan
    return Table(title, axis, sizes, lrs, loss, diverged, ran.sum(axis=0), failed, spread, se, seeds,
                 seed_loss, seed_diverged)
