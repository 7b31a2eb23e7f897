"""`python -m analysis`: help, one-line errors, the paper's tables end to end, and no torch."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.ingest import ingest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def analysis(*args: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *python_flags, "-m", "analysis", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def imported_modules(importtime_stderr: str) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^import time:.*\|\s*(\S+)\s*$", importtime_stderr, re.M)}


def test_ingest_and_report_the_paper_without_importing_torch(tmp_path):
    store, out = tmp_path / "store", tmp_path / "out"
    ingested = analysis("ingest", FIXTURES / "paper_tables_8_9.csv", "--store", store, python_flags=("-X", "importtime"))
    assert ingested.returncode == 0, ingested.stderr
    assert "ingested 72 records (0 diverged) as experiment 'paper_tables_8_9'" in ingested.stdout
    key = next((store / "records").glob("*.json")).stem
    reported = analysis("report", "--store", store, "--out", out, "--curves", key, "--jobs", "2",
                        python_flags=("-X", "importtime"))
    assert reported.returncode == 0, reported.stderr
    assert "| **4.364** |" in reported.stdout  # Table 8, width 128: the best cell, bold
    assert "- verdict: transfers: eta* trend -0.19 log2 per doubling of width" in reported.stdout  # Table 9
    assert (out / "report.md").read_text().startswith("# Learning-rate transfer: SP vs μP over width")
    curves = analysis("curves", "--store", store, "--key", key, "--out", out)  # an ingested cell: no curves
    assert curves.returncode == 0 and (out / "figures" / f"curves_{key}.png").is_file(), curves.stderr
    for run in (ingested, reported):
        modules = imported_modules(run.stderr)
        assert "pandas" in modules  # the check sees imports at all
        assert not {m for m in modules if m == "torch" or m.startswith("torch.")}


def test_help_names_every_command_and_option():
    top = analysis("--help")
    assert top.returncode == 0 and all(c in top.stdout for c in ("report", "ingest", "curves"))
    helps = {c: analysis(c, "--help") for c in ("report", "ingest", "curves")}
    assert all(h.returncode == 0 for h in helps.values())
    for option in ("--store", "--out", "--coord-check", "--curves", "--no-figures", "--max-trend"):
        assert option in helps["report"].stdout
    assert "nan: diverged" in helps["ingest"].stdout and "--experiment" in helps["ingest"].stdout
    assert "--key" in helps["curves"].stdout


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    (root / "empty").mkdir()
    ingest(FIXTURES / "paper_tables_12_13.csv", root / "full")
    (root / "bad.json").write_text("{not json")
    return root


@pytest.mark.parametrize("args, expected", [
    (("report", "--store", "{root}/nope", "--out", "{root}/o"), "store {root}/nope does not exist"),
    (("report", "--store", "{root}/empty", "--out", "{root}/o"), "store {root}/empty holds no records yet"),
    (("curves", "--store", "{root}/full", "--key", "0123456789abcdef", "--out", "{root}/o"),
     "no record for cell 0123456789abcdef"),
    (("report", "--store", "{root}/full", "--out", "{root}/o", "--coord-check", "{root}/bad.json"),
     "coordinate-check file {root}/bad.json is not a JSON list of rows"),
], ids=["missing store", "empty store", "unknown key", "bad coord check"])
def test_errors_are_one_clear_line(stores, args, expected):
    run = analysis(*(a.format(root=stores) for a in args))
    assert run.returncode == (2 if "store" in expected else 1)  # a store it cannot read: as sweeper's
    assert run.stderr.startswith("error: ") and expected.format(root=stores) in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert not (stores / "o").exists()  # inputs are checked before anything is written


def test_bad_csv_lists_its_bad_lines(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("width,depth,lr,param,optimizer,layernorm,val_loss\n64,2,-8,xx,adamw,true,3\n")
    run = analysis("ingest", csv, "--store", tmp_path / "store")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "line 2: param='xx' must be one of" in run.stderr
