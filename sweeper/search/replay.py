"""Replay: the transfer search against a store that holds a complete grid, each cell answered from
the store instead of trained. ``python -m sweeper replay --oracle STORE [--json]``.

The store's tables are analysis.tables' own (the report's), and the full grid's eta* per row is
analysis.optima's fit of the whole row, the same fit the search uses on its bracketed rows.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np

from analysis.optima import row_optimum
from analysis.tables import build_tables
from sweeper.store import Store

from .rounds import Ask, SearchError, SearchTable, TableResult, run_search, table_line
from .transfer import BUDGET, DIVERGED

_MAX_LISTED = 6


class ReplayOracle:
    """Answers a cell from a table of the store (analysis.tables.Table)."""

    def __init__(self, grids: list) -> None:
        self.grids = grids

    def answer(self, asks: list[Ask]) -> list[float]:
        out = []
        for ask in asks:
            grid = self.grids[ask.table]
            c = int(np.flatnonzero(grid.lrs == ask.lr)[0])
            out.append(DIVERGED if grid.diverged[ask.row, c] else float(grid.loss[ask.row, c]))
        return out


def on_lattice(grid):
    """The table on its grid's lrs: the lattice of the columns every row ran (their smallest lr plus
    multiples of their smallest step). A column off it that only some rows ran (the half steps or
    closing cells a report asked for) is no part of the grid the search walks and is left out; a
    lattice column some row lacks stays, a hole. Returns (table, the lrs left out)."""
    full = grid.lrs[(grid.runs > 0).all(axis=0)]
    if len(full) < 2 or len(full) == len(grid.lrs):
        return grid, []
    step = float(np.diff(full).min())
    steps = (grid.lrs - full[0]) / step
    keep = np.isclose(steps, np.round(steps)) | (grid.runs > 0).all(axis=0)
    if keep.all():
        return grid, []
    cols = np.flatnonzero(keep)
    sliced = dataclasses.replace(
        grid, lrs=grid.lrs[cols], loss=grid.loss[:, cols], diverged=grid.diverged[:, cols],
        runs=grid.runs[:, cols], spread=grid.spread[:, cols], se=grid.se[:, cols],
        seed_loss=grid.seed_loss[:, :, cols], seed_diverged=grid.seed_diverged[:, :, cols])
    return sliced, [float(lr) for lr in grid.lrs[~keep]]


def _search_table(grid) -> SearchTable:
    """A store table as a search line; raises SearchError naming the holes of an incomplete one."""
    holes = [(s, lr) for r, s in enumerate(grid.sizes) for c, lr in enumerate(grid.lrs) if grid.runs[r, c] == 0]
    if holes:
        shown = ", ".join(f"{grid.axis}={s:g} lr={lr:g}" for s, lr in holes[:_MAX_LISTED])
        more = f" and {len(holes) - _MAX_LISTED} more" if len(holes) > _MAX_LISTED else ""
        raise SearchError(f"the oracle store has holes: table '{grid.name}' lacks {len(holes)} of "
                          f"{grid.runs.size} cells ({shown}{more}); replay needs a complete grid")
    return SearchTable(grid.name, table_line(grid), tuple(f"{grid.name} {grid.axis}={s:g}" for s in grid.sizes))


def replay(store: Path, budget: float = BUDGET) -> dict:
    """The replay's figures: the shape of ``--json``, each row also saying how it ``settled``."""
    if not store.is_dir():
        raise SearchError(f"{store}: no such store directory")
    frame = Store(store).load()
    if frame.empty:
        raise SearchError(f"{store} holds no records to replay")
    grids, left_out = [], []
    for table in build_tables(frame):
        grid, extra = on_lattice(table)
        if len(grid.lrs) >= 2:
            grids.append(grid)
            left_out.append(extra)
    if not grids:
        raise SearchError(f"{store} holds no table with two or more learning rates")
    tables = [_search_table(g) for g in grids]
    results = run_search(tables, ReplayOracle(grids), budget=budget)
    return {"tables": [{**_table(g, result, row_optimum), **({"left_out_lrs": extra} if extra else {})}
                       for g, result, extra in zip(grids, results, left_out)]}


def _table(grid, result: TableResult, row_optimum) -> dict:
    rows, errors = [], []
    for r, found in enumerate(result.rows):
        full = row_optimum(grid.sizes[r], grid.lrs, grid.loss[r], grid.diverged[r])
        if found.eta_star is not None and full.estimate is not None and full.edge is None:
            errors.append(abs(found.eta_star - full.estimate))  # the target: rows with an interior optimum
        rows.append({"size": _number(found.size), "eta_star": found.eta_star,
                     "eta_star_grid": full.estimate, "cells": found.cells,
                     "compute_fraction": found.cells / len(grid.lrs), "settled": found.how})
    return {"name": grid.name, "compute_fraction": result.compute_fraction,
            "max_error": max(errors) if errors else None, "rows": rows}


def _number(value: float):
    return int(value) if float(value).is_integer() else float(value)


def _f(value: Optional[float], spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


HEADER = ("size", "eta* (search)", "eta* (full grid)", "cells", "compute", "settled")


def to_text(figures: dict) -> str:
    """Per table a plain-text table, each column as wide as its widest entry (numbers right-aligned)."""
    lines = []
    for table in figures["tables"]:
        rows = [[str(row["size"]), _f(row["eta_star"], ".2f"), _f(row["eta_star_grid"], ".2f"), str(row["cells"]),
                 f"{100 * row['compute_fraction']:.0f}%", row["settled"]] for row in table["rows"]]
        widths = [max(len(r[i]) for r in [list(HEADER), *rows]) for i in range(len(HEADER))]
        lines += [f"## {table['name']}",
                  *("  ".join(cell.ljust(w) if i == len(HEADER) - 1 else cell.rjust(w)
                              for i, (cell, w) in enumerate(zip(r, widths))).rstrip() for r in [list(HEADER), *rows]),
                  f"compute {100 * table['compute_fraction']:.1f}% of the grid; largest eta* error "
                  f"{_f(table['max_error'], '.2f')} log2 (rows whose grid optimum is interior)"]
        if table.get("left_out_lrs"):
            lines.append("left out (off the grid's lr lattice, run at some sizes only): log2 eta "
                         + ", ".join(f"{lr:g}" for lr in table["left_out_lrs"]))
        lines.append("")
    return "\n".join(lines).rstrip()


def to_json(figures: dict) -> str:
    """The issue's shape: per row size, eta_star, eta_star_grid, cells, compute_fraction."""
    return json.dumps({"tables": [{**t, "rows": [{k: v for k, v in row.items() if k != "settled"}
                                                 for row in t["rows"]]} for t in figures["tables"]]}, indent=2)


def main(store: Path, as_json: bool, budget: float) -> str:
    figures = replay(store, budget)
    return to_json(figures) if as_json else to_text(figures)
