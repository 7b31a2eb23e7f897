"""search=transfer: the strategy replayed on the paper's tables, and a real search sweep killed and resumed."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.optima import row_optimum
from analysis.analysed import analyse
from analysis.render import notes
from sweeper.store.index import load_store
from sweeper.store.records import records_dir
from sweeper.search.rounds import Ask, SearchTable, run_search
from sweeper.search.transfer import DIVERGED, Line

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "tests" / "fixtures" / "paper_tables_8_9.csv"  # Tables 10-13: paper_tables_10_11.csv, _12_13
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ROW_KEYS = {"size", "eta_star", "eta_star_grid", "cells", "compute_fraction"}


def cli(*args, cwd=ROOT, timeout=240):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("fixture", ["paper_tables_8_9.csv", "paper_tables_10_11.csv", "paper_tables_12_13.csv"])
def test_replay_on_the_paper_tables_finds_every_interior_optimum_for_at_most_40_percent_of_the_compute(
        tmp_path, fixture):
    paper_csv = ROOT / "tests" / "fixtures" / fixture
    store = tmp_path / "store"
    assert cli("-m", "analysis", "ingest", str(paper_csv), "--store", str(store)).returncode == 0
    run = cli("-m", "sweeper", "replay", "--oracle", str(store), "--json")
    assert run.returncode == 0, run.stderr
    tables = json.loads(run.stdout)["tables"]
    assert len(tables) == 2 and all(set(t) == {"name", "compute_fraction", "max_error", "rows"} for t in tables)

    paper = pd.read_csv(paper_csv)
    axis = "width" if paper["width"].nunique() > 1 else "depth"
    for table in tables:
        param = "sp" if "param=sp" in table["name"] else "mup"
        grid = paper[paper["param"] == param]
        lrs = np.sort(grid["lr"].unique().astype(float))
        # tokens x 12 d^2 L at fixed tokens: d^2 along width at fixed depth, L along depth at fixed width
        cost = {s: s * s if axis == "width" else s for s in grid[axis].unique()}
        spent = 0
        for row in table["rows"]:
            assert set(row) == ROW_KEYS
            losses = grid[grid[axis] == row["size"]].set_index("lr")["val_loss"].reindex(lrs).to_numpy(float)
            full = row_optimum(row["size"], lrs, losses, np.isnan(losses))
            assert row["eta_star_grid"] == full.estimate
            if full.edge is None:
                assert abs(row["eta_star"] - full.estimate) <= 0.5, (table["name"], row)
            spent += row["cells"] * cost[row["size"]]
        fraction = spent / (len(lrs) * sum(cost.values()))
        assert math.isclose(table["compute_fraction"], fraction), table["name"]
        assert fraction <= 0.4 + 1e-12, (table["name"], fraction)
        assert table["max_error"] <= 0.5

    text = cli("-m", "sweeper", "replay", "--oracle", str(store))
    assert text.returncode == 0 and "largest eta* error" in text.stdout and "bracketed" in text.stdout


def test_replay_of_a_store_with_holes_names_the_missing_cells(tmp_path):
    lines = PAPER.read_text().splitlines()
    holed = tmp_path / "holed.csv"
    holed.write_text("\n".join(line for line in lines if not line.startswith("512,4,-9,sp")) + "\n")
    store = tmp_path / "store"
    assert cli("-m", "analysis", "ingest", str(holed), "--store", str(store)).returncode == 0
    run = cli("-m", "sweeper", "replay", "--oracle", str(store))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "holes" in run.stderr and "width=512 lr=-9" in run.stderr


class Parabolas:
    """A made-up table: loss (x - eta*(size))^2 + 1/size, diverged above eta*(size) + 1."""

    def __init__(self, optimum):
        self.optimum, self.answers = optimum, []

    def answer(self, asks: list[Ask]):
        out = []
        for ask in asks:
            size, centre = 2.0 ** ask.row, self.optimum(ask.row)
            out.append(DIVERGED if ask.lr > centre + 1 else (ask.lr - centre) ** 2 + 1 / size)
        self.answers += out
        return out


def test_the_search_follows_a_drifting_optimum_and_diverged_cells_bound_it():
    sizes, lrs = tuple(2.0 ** k for k in range(6)), tuple(float(x) for x in range(-12, 0))
    line = Line("width", sizes, lrs, tuple(s * s for s in sizes), trend=True)
    oracle = Parabolas(lambda row: -3.3 - 0.8 * row)  # SP-like: eta* falls 0.8 per doubling
    [result] = run_search([SearchTable("t", line, tuple(f"r{k}" for k in range(6)))], oracle, budget=1.0)
    for k, row in enumerate(result.rows):
        assert row.how == "bracketed" and abs(row.eta_star - (-3.3 - 0.8 * k)) <= 0.5
    assert result.compute_fraction < 0.5  # twelve lrs, about three per row
    assert DIVERGED in oracle.answers  # some rows are bounded by a diverged cell


class TwoSizes:
    """Loss (x - centre)^2 / 4 + level per row: row 0 centred at -8; row 1 as given, and better."""

    def __init__(self, centre1):
        self.centres, self.levels, self.asked = (-8.0, centre1), (3.0, 2.5), []

    def answer(self, asks: list[Ask]):
        self.asked.append([(a.row, a.lr) for a in asks])
        return [(a.lr - self.centres[a.row]) ** 2 / 4 + self.levels[a.row] for a in asks]


def test_a_larger_size_settles_on_one_cell_at_the_prediction_or_looks_below_where_it_got_worse():
    def table(lrs):  # the larger size costs 100 cells of the smaller: it decides the budget
        return [SearchTable("t", Line("width", (1.0, 2.0), lrs, (1.0, 100.0), trend=False), ("r0", "r1"))]

    held = TwoSizes(-8.0)  # muP holds: the larger size's one cell at -8 beats the smaller's best
    [result] = run_search(table((-10.0, -9.0, -8.0, -7.0, -6.0)), held, budget=0.4)
    assert [r.how for r in result.rows] == ["bracketed", "transfer"]
    assert result.rows[1].cells == 1 and result.rows[1].eta_star == result.rows[0].eta_star
    assert held.asked[-1] == [(1, -8.0)] and result.compute_fraction <= 0.4

    moved = TwoSizes(-9.6)  # the optimum moved down: at -8 the larger size is worse than the smaller
    [result] = run_search(table(tuple(float(x) for x in range(-12, -3))), moved, budget=1.0)
    row1 = [lr for asked in moved.asked for r, lr in asked if r == 1]
    assert row1[:2] == [-8.0, -9.0]  # one cell at the prediction, then below it, not where it leans
    assert result.rows[1].how == "bracketed" and abs(result.rows[1].eta_star + 9.6) <= 0.5


def test_a_killed_transfer_sweep_resumes_from_the_store_and_brackets_every_row(tmp_path):
    store = tmp_path / "store"
    args = [str(ROOT / "sweep.py"), "-m", "experiment=smoke", "width=16,...,64", "lr=-10:-6", "steps=8",
            "search=transfer", "search_budget=1", "search_refine=true", f"store={store}"]
    proc = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # killed after its second round (3 cells at width 16, then a half step)
        deadline = time.monotonic() + 180
        while len(list(records_dir(store).glob("*.json"))) < 4:
            assert proc.poll() is None and time.monotonic() < deadline, "the search ended before the kill"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {p.name: p.read_bytes() for p in records_dir(store).glob("*.json")}
    assert (store / "search" / "journal.log").is_file()

    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    trained = {line.split()[1] for line in again.stdout.splitlines() if line.startswith("cell ")}
    assert trained and not trained & {name.removesuffix(".json") for name in before}  # none retrained
    assert all((records_dir(store) / name).read_bytes() == data for name, data in before.items())

    frame = load_store(store)
    lrs = np.arange(-10.0, -5.0)
    assert len(frame) < 15  # rows are sparse: not the whole 3 x 5 grid
    for width in (16, 32, 64):
        row = frame[frame["width"] == width].set_index("lr")
        loss = row["val_loss"].reindex(lrs).to_numpy(float)
        diverged = (row["status"] == "diverged").reindex(lrs, fill_value=False).to_numpy()
        assert row_optimum(width, lrs, loss, diverged).edge is None, f"width {width} not bracketed"
        [half] = [lr for lr in row.index if lr not in lrs]  # refined: one half step next to the best
        assert abs(half - lrs[np.nanargmin(loss)]) == 0.5
    assert all(f"{w}: bracketed by" in again.stdout for w in (16, 32, 64))
    [analysed] = analyse(frame)  # the report says it too
    cells = [int((frame["width"] == w).sum()) for w in (16, 32, 64)]
    assert ("sparse rows: " + ", ".join(f"width {w} bracketed by {n} cells" for w, n in zip((16, 32, 64), cells))
            in notes(analysed.table, analysed.optima, analysed.verdict, analysed.noise))


def test_a_bad_search_or_a_line_without_lrs_stops_before_anything_runs(tmp_path):
    bogus = cli(str(ROOT / "sweep.py"), "-m", "experiment=smoke", "search=bogus", "store=s", cwd=tmp_path)
    assert bogus.returncode != 0 and "expected one of [grid, transfer]" in bogus.stderr
    one_lr = cli(str(ROOT / "sweep.py"), "-m", "experiment=smoke", "search=transfer", "lr=-8", "store=s",
                 cwd=tmp_path)
    assert one_lr.returncode != 0 and "search=transfer searches the learning rate" in one_lr.stderr
    assert not (tmp_path / "s" / "records").exists()


@pytest.mark.parametrize("name", ["cpu_width", "cpu_depth"])
def test_replay_on_the_projects_committed_stores_meets_the_same_targets(tmp_path, name):
    store = tmp_path / name
    shutil.copytree(ROOT / "results" / name / "records", store / "records")
    run = cli("-m", "sweeper", "replay", "--oracle", str(store), "--json")
    assert run.returncode == 0, run.stderr
    tables = json.loads(run.stdout)["tables"]
    params = {"param=sp" for t in tables if "param=sp" in t["name"]} | {"param=mup" for t in tables if "param=mup" in t["name"]}
    assert params == {"param=sp", "param=mup"}
    for table in tables:
        assert table["compute_fraction"] <= 0.4 + 1e-12 and table["max_error"] <= 0.5, table


def test_replay_text_columns_line_up_under_their_headers():
    from sweeper.search.replay import to_text

    figures = {"tables": [{"name": "t", "compute_fraction": 0.5, "max_error": 0.25, "rows": [
        {"size": 16, "eta_star": -3.5, "eta_star_grid": -3.54, "cells": 3, "compute_fraction": 0.5, "settled": "bracketed"},
        {"size": 1024, "eta_star": None, "eta_star_grid": -10.25, "cells": 12, "compute_fraction": 1.0, "settled": "edge"}]}]}
    header, *rows = to_text(figures).splitlines()[1:4]
    # A header cell is words joined by single spaces; columns are set apart by two or more.
    names = list(re.finditer(r"\S+(?: \S+)*", header))
    assert len(names) == 6, header
    for row in rows:
        cells = list(re.finditer(r"\S+", row))
        assert [c.end() for c in cells[:-1]] == [n.end() for n in names[:-1]], (header, row)  # numbers right-aligned
        assert cells[-1].start() == names[-1].start(), (header, row)  # the text column left-aligned
