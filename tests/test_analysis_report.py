"""The report end to end on real stores: the paper's Tables 8, 9, 12, 13 ingested, and own runs with
diverged, missing, failed and multi-seed cells; the figures it draws."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from analysis import figures
from analysis.ingest import ingest
from analysis.analysed import analyse
from analysis.report import ReportOptions, report
from analysis.render import interval_bounds
from sweeper.store.schema import make_record
from sweeper.store.index import load_store
from sweeper.store.records import write_record

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"

# Each row's bold cell in the paper, read off the printed numbers (the row minimum): size -> log2 eta.
PAPER_BOLD = {
    ("paper_tables_8_9", "sp"): {128: -6, 256: -7, 512: -8, 1024: -8, 2048: -8, 4096: -9},  # Table 8
    ("paper_tables_8_9", "mup"): {128: -7, 256: -7, 512: -7, 1024: -7, 2048: -7, 4096: -8},  # Table 9
    ("paper_tables_12_13", "sp"): {4: -10, 8: -10, 16: -10, 32: -10, 64: -10, 128: -10, 256: -11},  # 12
    ("paper_tables_12_13", "mup"): {4: -10, 8: -10, 16: -10, 32: -7, 64: -7, 128: -7, 256: -7},  # 13
}


def read_markdown(path: Path) -> dict[int, dict[float, str]]:
    """A table file's cells: size -> {log2 eta: cell text}."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in path.read_text().splitlines() if line.startswith("|")]
    header, body = rows[0], rows[2:]
    count = header.index("eta* grid") - 1  # then eta* fit, eta* 90% (where known) and regret
    lrs = [float(h) for h in header[1:1 + count]]
    return {int(row[0]): dict(zip(lrs, row[1:1 + count])) for row in body}


def table_file(out: Path, *parts: str, suffix: str = ".md") -> Path:
    (match,) = [p for p in (out / "tables").glob(f"*{suffix}") if all(part in p.name for part in parts)]
    return match


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    for name in ("paper_tables_8_9", "paper_tables_12_13"):
        ingest(FIXTURES / f"{name}.csv", root / "store")
    text = report(ReportOptions(root / "store", root / "out", figures=False))
    return root / "out", text


@pytest.mark.parametrize("experiment, param", list(PAPER_BOLD))
def test_each_rows_bold_cell_is_the_papers(paper, experiment, param):
    out, _ = paper
    cells = read_markdown(table_file(out, experiment, f"param={param}_"))
    bold = {size: [lr for lr, text in row.items() if text.startswith("**")] for size, row in cells.items()}
    assert bold == {size: [lr] for size, lr in PAPER_BOLD[experiment, param].items()}


def test_paper_cells_are_the_published_numbers_and_nan_where_training_exploded(paper):
    out, _ = paper
    with open(FIXTURES / "paper_tables_12_13.csv") as fh:
        published = list(csv.DictReader(fh))
    for param in ("sp", "mup"):
        cells = read_markdown(table_file(out, "paper_tables_12_13", f"param={param}_"))
        for row in (r for r in published if r["param"] == param):
            text = cells[int(row["depth"])][float(row["lr"])].strip("*")
            if row["val_loss"] == "nan":
                assert text == "NaN"
            else:
                assert float(text) == pytest.approx(float(row["val_loss"]), abs=5e-4)


def test_sp_optimum_drifts_with_width_and_mup_does_not(paper):
    out, text = paper
    summary = pd.read_csv(out / "summary.csv")
    width = summary[summary["experiment"] == "paper_tables_8_9"].groupby("param").first()
    assert width.loc["sp", "drift"] > 3 and width.loc["sp", "verdict"] == "does not transfer"  # Table 8: -6 -> -9
    assert width.loc["mup", "drift"] < 1.5 and width.loc["mup", "verdict"] == "transfers"  # Table 9: ~-7 throughout
    fitted = summary[(summary["experiment"] == "paper_tables_8_9") & (summary["param"] == "sp")]
    assert fitted["lr_star_fit"].is_monotonic_decreasing  # SP: wider wants a smaller LR
    verdicts = [line for line in text.splitlines() if line.startswith("- verdict:")]
    assert sum(v.startswith("- verdict: transfers") for v in verdicts) == 1  # Table 9 only


def test_depth_sweeps_without_layernorm_edges_and_partial_transfer(paper):
    out, text = paper
    summary = pd.read_csv(out / "summary.csv").fillna({"edge": ""})
    mup = summary[(summary["experiment"] == "paper_tables_12_13") & (summary["param"] == "mup")]
    # Table 13: depth >= 32 is best at the grid's top, -7; the true optimum is unknown.
    assert dict(zip(mup["size"], mup["edge"])) == {4: "", 8: "", 16: "", 32: "above", 64: "above",
                                                    128: "above", 256: "above"}
    assert "depth 256: edge: the optimum may lie above -7" in text
    # The paper says "muP transfers ... across different depths larger than 32", but its Table 13 has
    # those rows' best cell on the grid's top edge: open optima decide nothing, and the report says
    # which cells would close them.
    section = text.split("### μP, experiment=paper_tables_12_13")[1].split("###")[0]
    assert "- verdict: undecided: " in section and "transfers for depth" not in section
    assert (mup["lr_star_high"] == math.inf).sum() == 4 and (mup["lr_star_low"][mup["edge"] != ""] == -7.5).all()
    command = mup["decide"].iloc[0]
    assert "depth=32,64,128,256" in command and command.endswith("lr=-6,-5")
    assert f"- to decide, run: `{command}`" in section


def test_latex_and_csv_carry_the_same_table(paper):
    out, _ = paper
    tex = table_file(out, "paper_tables_8_9", "param=sp_", suffix=".tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\textbf{4.364}" in tex
    assert tex.count("\\textbf{") == 6  # one per width
    grid = pd.read_csv(table_file(out, "paper_tables_12_13", "param=sp_", suffix=".csv"))
    row = grid[grid["depth"] == 8].iloc[0]
    assert math.isnan(row["-9"]) and row["-10"] == pytest.approx(4.811) and row["lr_star_grid"] == -10
    assert "\\begin{tabular}" in (out / "tables.tex").read_text()


# ---- own runs: diverged, missing, failed, seeds -------------------------------------------------

def put(store: Path, width: int, lr: float, status: str = "ok", loss: float | None = None, seed: int = 0,
        curves: dict | None = None) -> dict:
    config = {"width": width, "depth": 2, "lr": lr, "param": "mup", "optimizer": "adamw", "seed": seed}
    record = make_record(config, status, experiment="own", metrics={"val_loss": loss}, curves=curves)
    write_record(store, record)
    return record


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    store = tmp_path_factory.mktemp("own") / "store"
    for lr, loss in zip((-10, -9, -8, -7), (3.0, 3.3, 3.5, 3.9)):  # best on the lower edge
        put(store, 64, lr, loss=loss)
    put(store, 64, -9, "diverged", loss=1.0, seed=1)  # a diverged seed, with a low last loss
    for lr, loss in zip((-10, -9, -7), (3.2, 2.9, 3.1)):  # -8 never ran: -9 is an edge
        put(store, 128, lr, loss=loss)
    put(store, 128, -9, loss=2.7, seed=1)  # two seeds: mean 2.8
    for lr, loss in zip((-10, -9), (3.0, 2.6)):
        put(store, 256, lr, loss=loss)
    put(store, 256, -8, loss=2.4, curves={"train": [[0, 9.0], [10, 5.0], [20, 2.5]], "val": [[0, 9.1], [20, 2.4]]})
    put(store, 256, -7, "ok", loss=math.nan)  # ok but NaN: diverged
    put(store, 256, -6, "failed")  # failed runs leave the cell blank
    return store


def test_marks_of_diverged_missing_failed_edge_and_seed_cells(own, tmp_path):
    text = report(ReportOptions(own, tmp_path, figures=False))
    cells = read_markdown(table_file(tmp_path, "depth=2"))
    # Cells hold 1 or 2 seeds, so each says how many; two finite seeds show their spread.
    assert cells[64] == {-10: "**3.000 (1)**", -9: "NaN (2)", -8: "3.500 (1)", -7: "3.900 (1)", -6: ""}
    assert cells[128] == {-10: "3.200 (1)", -9: f"**2.800 ± {0.2 / math.sqrt(2):.3f} (2)**", -8: "",
                          -7: "3.100 (1)", -6: ""}
    assert cells[256] == {-10: "3.000 (1)", -9: "2.600 (1)", -8: "**2.400 (1)**", -7: "NaN (1)", -6: ""}
    assert "width 64: edge: the optimum may lie below -10" in text
    assert "width 256: edge" not in text  # -7 diverged: the optimum lies below it
    assert "1 failed run(s) left out" in text
    # Width 128 never ran -8, but its best cell -9 has run cells on both sides (-10, -7): bracketed,
    # fitted through those three, and judged.
    assert "width 128: edge" not in text and "incomplete" not in text
    summary = pd.read_csv(tmp_path / "summary.csv")  # regret of width 64's eta* (-10) at each width
    a, b, c = np.polyfit([-10.0, -9.0, -7.0], [3.2, 2.8, 3.1], 2)
    assert summary["regret"].tolist() == pytest.approx([0.0, 3.2 - (c - b * b / (4 * a)), 3.0 - 2.4])
    assert "1 to 2 seeds per cell (in brackets); cells: mean ± standard deviation over the seeds" in text


def test_figures_show_the_data(own, paper, tmp_path):
    coord = [{"param": p, "optimizer": "adamw", "width": w, "depth": 2, "seed": s, "step": t, "block": b,
              "rms": (w / 64) ** (0.5 if p == "sp" else 0.0) * (1 + 0.1 * t) * (1 + b)}
             for p in ("sp", "mup") for w in (64, 128, 256) for s in (0, 1) for t in range(4) for b in range(2)]
    (own / "coord_check_test.json").write_text(json.dumps(coord))
    key = load_store(own).query("width == 256 and lr == -8")["key"].item()
    report(ReportOptions(own, tmp_path, curves=[key], workers=2))
    drawn = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert drawn == sorted(f"{stem}.{ext}" for ext in ("png", "pdf") for stem in (
        "transfer_width", "eta_star_vs_width", "coord_check_test", f"curves_{key}"))
    for png in (tmp_path / "figures").glob("*.png"):
        pixels = matplotlib.image.imread(png)[..., :3]
        assert pixels.std() > 0.05, png.name  # not blank
        assert (pixels.min(axis=2) < 0.9).mean() > 0.02, png.name  # ink beyond the frame
    for pdf in (tmp_path / "figures").glob("*.pdf"):
        assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 5000

    [analysed] = analyse(load_store(own))
    fig = figures.transfer([analysed.table], [analysed.optima], ["SP: undecided"], "t")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["width 64", "width 128", "width 256"]
    assert ax.get_lines()[2].get_ydata().tolist() == [3.0, 2.6, 2.4]  # the NaN and blank cells are left out
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "diverged (drawn on the top edge)" in legend and "loss above the axis" not in legend  # only what is drawn

    fig = figures.coord_check(pd.DataFrame(coord), "coord")
    # An older file (block rows, rms only) has h alone: one panel over width, SP's growth in its legend.
    assert [a.get_title() for a in fig.axes] == ["h (last block) over width"]
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert set(lines) == {"SP +0.50 ✗", "μP +0.00 ✓"}
    assert lines["SP +0.50 ✗"].get_xdata().tolist() == [64, 128, 256]
    assert lines["SP +0.50 ✗"].get_ydata().tolist() == pytest.approx([1, 2**0.5, 2])  # relative to width 64


def test_y_range_keeps_exploding_losses_from_flattening_the_curves(paper):
    out, _ = paper
    store = out.parent / "store"
    [table13] = [a for a in analyse(load_store(store)) if "paper_tables_12_13" in a.table.name
                 and a.table.title["param"] == "mup"]
    ax = figures.transfer([table13.table], [table13.optima], ["μP"], "t").axes[0]
    low, high = ax.get_ylim()
    assert 5.2 < high < 20  # 345.85, 246.45, 131.43 ... are off the top; every row's best is in
    assert low < 3.724
    lines = figures.eta_star("depth", [table13.table], [table13.optima], [interval_bounds(table13.noise)]).axes[0].get_lines()
    lines = [line for line in lines if not line.get_label().startswith("_")]  # not the bars' caps
    assert len(lines) == 1 and lines[0].get_xdata().tolist() == [4, 8, 16, 32, 64, 128, 256]


def test_report_plots_the_trainers_coordinate_check(tmp_path):
    coord = tmp_path / "coord.json"
    subprocess.run([sys.executable, "-m", "trainer.coord_check", "--widths", "32,64", "--params", "sp,mup",
                    "--seeds", "0,1", "--out", coord, "depth=2", "steps=2", "seq_len=16", "batch_size=2"],
                   cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True)
    ingest(FIXTURES / "paper_tables_8_9.csv", tmp_path / "store")
    report(ReportOptions(tmp_path / "store", tmp_path / "out", coord_checks=[coord]))
    png = tmp_path / "out" / "figures" / "coord_check_coord.png"
    assert matplotlib.image.imread(png).std() > 0.05
    fig = figures.coord_check(pd.DataFrame(json.loads(coord.read_text())), "real")
    assert [a.get_title() for a in fig.axes] == [f"{scale} over width" for scale in
                                                ("h (last block)", "Δh (last block)", "Δlogits", "ΔW1·x (MLP, every block)")]
    assert all(line.get_xdata().tolist() == [32, 64] for a in fig.axes for line in a.get_lines())
    assert [line.get_label().split()[0] for line in fig.axes[0].get_lines()] == ["SP", "μP"]  # SP first


def test_settings_that_vary_split_tables_and_name_their_files(tmp_path):
    store = tmp_path / "store"
    for init_std in (0.01, 0.02):
        for width, lr in ((64, -8), (64, -7), (128, -8), (128, -7)):
            config = {"width": width, "depth": 2, "lr": lr, "init_std": init_std}
            write_record(store, make_record(config, "ok", metrics={"val_loss": 3.0 + init_std - lr / 100}))
    text = report(ReportOptions(store, tmp_path / "out", figures=False))
    assert "init_std=0.01" in text and "init_std=0.02" in text
    assert len(list((tmp_path / "out" / "tables").glob("*init_std=0.01*.md"))) == 1
    assert len(list((tmp_path / "out" / "tables").glob("*.csv"))) == 2
    paths = figures.save(figures.training_curves(make_record({"lr": -8}, "ok")), tmp_path / "f" / "a.b=0.5")
    assert sorted(p.name for p in paths) == ["a.b=0.5.pdf", "a.b=0.5.png"]


def test_the_report_opens_with_the_answer_and_it_agrees_with_summary_csv(paper):
    out, _ = paper
    text = (out / "report.md").read_text()
    lines = text.splitlines()
    assert lines[0] == f"# Learning-rate transfer: SP vs μP over width and depth ({out.parent / 'store'})"
    answers = [line[2:] for line in lines[2:] if line.startswith("- ")][:4]
    summary = pd.read_csv(out / "summary.csv")
    assert len(answers) == summary["table"].nunique() == 4
    for table, rows in summary.groupby("table", sort=False):
        verdict = rows["verdict"].iloc[0]
        name = "μP" if "param=mup" in table else "SP"
        [line] = [a for a in answers if a.startswith(f"{name} (experiment={rows['experiment'].iloc[0]},")]
        assert f" {verdict} over {rows['axis'].iloc[0]} " in line
        closed = rows[rows["lr_star_open"].isna()]
        if verdict == "transfers":  # one rate for every size: the mean of the rows' eta*
            assert f"use η_base = 2^{closed['lr_star_fit'].mean():.2f} ≈ {2 ** closed['lr_star_fit'].mean():.3g}" in line
        else:  # each size's own eta* (and the trend)
            for size, fit in zip(closed["size"], closed["lr_star_fit"]):
                assert f"{rows['axis'].iloc[0]} {size}: 2^{fit:.2f}" in line
            if verdict == "undecided":
                assert "To decide, run: python sweep.py -m" in line
    assert "## How to read this" in text and text.index("## How to read this") < text.index("## Tables")
    # `analysis answer` prints just the opening.
    answer = subprocess.run([sys.executable, "-m", "analysis", "answer", "--store", out.parent / "store"],
                            cwd=REPO, capture_output=True, text=True, check=True)
    assert answer.stdout == text[:text.index("## How to read this")].rstrip("\n") + "\n"
    missing = subprocess.run([sys.executable, "-m", "analysis", "answer", "--store", out.parent / "nope"],
                             cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_latex_captions_are_short_and_the_verdict_stands_below_the_table(paper):
    out, _ = paper
    tex = (out / "tables.tex").read_text()
    captions = [line for line in tex.splitlines() if line.startswith("\\caption")]
    assert len(captions) == 4 and all("verdict" not in c and len(c) < 120 for c in captions)
    assert tex.count("verdict: ") == 4 and tex.index("verdict: ") > tex.index("\\end{tabular}")


def test_no_regret_interval_reaches_below_zero(paper, own, tmp_path):
    report(ReportOptions(own, tmp_path, figures=False))
    for out in (paper[0], tmp_path):
        summary = pd.read_csv(out / "summary.csv")
        low = summary["regret_low"].dropna()
        assert len(low) and (low >= 0).all() and (summary["regret_high"].dropna() >= low[low.index.isin(summary["regret_high"].dropna().index)]).all()


def test_the_coordinate_check_figure_shows_each_scale_over_width_and_depth_with_its_verdict():
    rows = pd.DataFrame(json.loads((REPO / "results" / "coord_check" / "coord_check.json").read_text()))
    fig = figures.coord_check(rows, "committed")
    titles = [a.get_title() for a in fig.axes]
    assert titles == [f"{scale} over {axis}" for scale in ("h (last block)", "Δh (last block)", "Δlogits",
                                                            "ΔW1·x (MLP, every block)")
                      for axis in ("width", "depth")]
    labels = {a.get_title(): [line.get_label() for line in a.get_lines()] for a in fig.axes}
    # Each failure is in view and marked: SP's Δlogits and ΔW1·x over width and h over depth, k = 1's
    # inner update over depth; μP flat everywhere.
    for title, param in [("Δlogits over width", "SP"), ("ΔW1·x (MLP, every block) over width", "SP"),
                         ("h (last block) over depth", "SP"), ("ΔW1·x (MLP, every block) over depth", "μP (k=1)")]:
        [label] = [lab for lab in labels[title] if lab.startswith(param + " ")]
        assert label.endswith("✗"), (title, label)
    assert all(lab.endswith("✓") for a in labels.values() for lab in a if lab.startswith("μP +") or lab.startswith("μP -"))
    verdicts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert verdicts == ["SP: not flat", "μP: flat", "μP (k=1): not flat"]
