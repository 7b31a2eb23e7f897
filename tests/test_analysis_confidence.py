"""Confidence: verdicts that say when the noise cannot decide (with the sweep line that would), on
synthetic stores ingested with seeds; and a real two-seed sweep whose report shows both seeds.
How often the intervals cover the truth: tests/test_calibration.py."""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PolyCollection

from analysis import figures
from analysis.ingest import ingest
from analysis.analysed import analyse
from analysis.report import ReportOptions, report
from analysis.render import interval_bounds
from sweeper.store.index import load_store
from test_analysis_next import composed, sweep_cells

REPO = Path(__file__).resolve().parent.parent
LRS = np.arange(-10, -3)  # log2 eta -10 .. -4
CURVATURE = 0.05  # loss per log2-eta squared away from eta*: a bowl about as wide as a real one


def synthetic_csv(path: Path, eta_star: dict[int, float], noise: float, seeds: int, rng: np.random.Generator,
                  lrs: np.ndarray = LRS, standard_error: float | None = None) -> Path:
    """Rows of a width sweep: loss = a floor that falls with width + a parabola around eta_star[width]
    + normal noise of sd ``noise`` per run; ``standard_error`` fills the column val_loss_se."""
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["width", "depth", "lr", "param", "optimizer", "layernorm", "seed", "val_loss", "val_loss_se"])
        for width, eta in eta_star.items():
            for seed in range(seeds):
                for lr in lrs:
                    loss = 3.0 - 0.1 * math.log2(width) + CURVATURE * (lr - eta) ** 2 + noise * rng.standard_normal()
                    out.writerow([width, 2, lr, "mup", "adamw", "true", seed, loss,
                                  "" if standard_error is None else standard_error])
    return path


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory):
    """Three width sweeps of 3 seeds: a flat eta* with small noise, a drifting one, a flat one with
    large noise."""
    root = tmp_path_factory.mktemp("verdicts")
    rng = np.random.default_rng(3)
    widths = (64, 128, 256, 512)
    for name, eta_star, noise in (("flat", [-7.2] * 4, 0.002), ("drifting", [-6.0, -6.9, -7.8, -8.7], 0.002),
                                  ("noisy", [-7.2] * 4, 0.15)):
        ingest(synthetic_csv(root / f"{name}.csv", dict(zip(widths, eta_star)), noise, 3, rng), root / "store")
    text = report(ReportOptions(root / "store", root / "out"))
    summary = pd.read_csv(root / "out" / "summary.csv", keep_default_na=False)
    return root, text, summary.set_index(["experiment", "size"])


def test_flat_reads_transfers_drifting_does_not_and_noise_undecided(verdicts):
    _, text, summary = verdicts
    verdict = summary.groupby("experiment")["verdict"].first()
    assert verdict.to_dict() == {"flat": "transfers", "drifting": "does not transfer", "noisy": "undecided"}
    for experiment in ("flat", "drifting", "noisy"):
        rows = summary.loc[experiment]
        assert (rows["lr_star_interval"] == "seeds").all() and (rows["seeds"] == 3).all()
        assert (rows["lr_star_low"] <= rows["lr_star_fit"]).all() and (rows["lr_star_fit"] <= rows["lr_star_high"]).all()
        trend = rows.iloc[0]
        assert trend["trend_low"] <= trend["trend"] <= trend["trend_high"] and trend["trend_interval"] == "seeds"
        assert trend["doublings"] == 3 and (rows["lr_star_open"] == "").all()
    assert -0.25 <= summary.loc["flat", "trend_low"].iloc[0] and summary.loc["flat", "trend_high"].iloc[0] <= 0.25
    assert summary.loc["drifting", "trend_high"].iloc[0] < -0.25  # -0.9 log2 per doubling
    noisy = summary.loc["noisy"].iloc[0]
    assert noisy["trend_low"] < -0.25 or noisy["trend_high"] > 0.25  # the interval reaches past the threshold
    assert "3 seeds per cell" in text and "from 3 seed(s) per row (the per-seed fits' spread pooled over the rows, 8 df)" in text
    assert (summary.loc[["flat", "drifting"], "decide"] == "").all()


def test_undecided_suggests_a_sweep_line_that_runs_more_seeds(verdicts):
    root, text, summary = verdicts
    command = summary.loc["noisy", "decide"].iloc[0]
    section = text.split("## Tables")[1].split("experiment=noisy")[1].split("###")[0]  # the table, not the answer
    assert "- verdict: undecided: " in section and "; to decide: run " in section
    assert f"- to decide, run: `{command}`" in section
    cells = sweep_cells(command)  # the sweeper's own grid parser reads it back
    seeds = sorted({int(c["seed"]) for c in cells})
    assert seeds == list(range(3, 3 + len(seeds)))  # new seeds, after the table's 0, 1, 2
    assert f"run {len(seeds)} more seed" in section
    assert {float(c["lr"]) for c in cells} == set(LRS.astype(float))  # the rows' grid
    widths = sorted({int(c["width"]) for c in cells})
    assert set(widths) <= {64, 128, 256, 512}
    named = f"widths {', '.join(map(str, widths[:-1]))} and {widths[-1]}" if len(widths) > 1 else f"width {widths[0]}"
    assert f"more seed{'s' * (len(seeds) > 1)} at {named}" in section
    assert all(c["store"] == str(root / "store") for c in cells)
    config = composed([f"{k}={v}" for k, v in cells[0].items() if k != "store"])  # Hydra composes a cell
    assert (config["param"], config["optimizer"], config["layernorm"], config["depth"]) == ("mup", "adamw", True, 2)


def test_figures_draw_the_intervals_and_the_seeds_spread(verdicts, tmp_path):
    root, _, _ = verdicts
    [noisy] = [a for a in analyse(load_store(root / "store")) if a.table.title["experiment"] == "noisy"]
    bounds = interval_bounds(noisy.noise)
    ax = figures.eta_star("width", [noisy.table], [noisy.optima], [bounds]).axes[0]
    [bars] = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert np.allclose(sorted((a[1], b[1]) for a, b in bars.get_segments()), sorted(bounds))
    ax = figures.transfer([noisy.table], [noisy.optima], ["μP"], "t").axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 4  # one band of +- sd over the seeds per width
    top = max(path.vertices[:, 1].max() for path in bands[0].get_paths())
    assert top == pytest.approx(np.nanmax(noisy.table.loss[0] + noisy.table.spread[0]))
    # Long legend labels widen the figure instead of running off its edge.
    long = [dataclasses.replace(noisy.table, title={**noisy.table.title, "experiment": name * 3})
            for name in ("a_long_experiment_name_", "another_one_")]
    wide = figures.save(figures.eta_star("width", long, [noisy.optima] * 2, [bounds] * 2), tmp_path / "wide")
    for png in [*(root / "out" / "figures").glob("*.png"), wide[0]]:
        pixels = matplotlib.image.imread(png)[..., :3]
        assert (pixels[:, -3:].min(axis=2) > 0.95).all(), f"{png.name}: ink at the right edge (a cut-off legend)"


def test_a_two_seed_sweep_reports_both_seeds(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = subprocess.run([sys.executable, str(REPO / "sweep.py"), "-m", "experiment=smoke", "width=32", "lr=-9,-8",
                            "seed=0,1", "steps=4", "store=store"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    frame = load_store(tmp_path / "store")
    assert len(frame) == 4 and sorted(set(frame["seed"])) == [0, 1]
    assert (frame["extra_val_loss_se"] > 0).all()  # the final eval's standard error, recorded
    run = subprocess.run([sys.executable, "-m", "analysis", "report", "--store", tmp_path / "store", "--out",
                          tmp_path / "out", "--no-figures"], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "2 seeds per cell; cells: mean ± standard deviation over the seeds" in run.stdout
    table = next((tmp_path / "out" / "tables").glob("*.md")).read_text()
    mean = frame[(frame["width"] == 32) & (frame["lr"] == -9)]["val_loss"]
    assert f"{mean.mean():.3f} ± {mean.std():.3f}" in table
    assert "\\pm" in next((tmp_path / "out" / "tables").glob("*.tex")).read_text()
