"""What a sweep prints: its own line per cell, Hydra's launcher lines only with verbose=true, and
the project's help before Hydra's."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sweep(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_one_line_per_cell_and_hydras_lines_only_when_asked(tmp_path):
    cells = ["-m", "experiment=smoke", "width=32", "lr=-9,-8", "steps=2", "jobs=1"]
    quiet = sweep([*cells, "store=quiet"], tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    output = quiet.stdout + quiet.stderr
    assert "Launching" not in output and "planned_cell" not in output
    assert [line for line in output.splitlines() if "cells finished" in line] == [
        line for line in output.splitlines() if line.startswith("[sweep] ") and "/2 cells finished" in line]
    assert output.count("cells finished") == 2
    assert [line for line in output.splitlines() if line.startswith("cell ")] == [
        line for line in output.splitlines() if line.startswith("cell ") and ": ok val_loss=" in line]
    assert len([line for line in output.splitlines() if line.startswith("cell ")]) == 2
    assert "step 1/2" not in output  # the trainer's step lines
    loud = sweep([*cells, "store=loud", "verbose=true"], tmp_path)
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert (loud.stdout + loud.stderr).count("Launching 1 jobs locally") == 2
    assert (loud.stdout + loud.stderr).count("step 2/2") == 2


def test_help_is_the_projects_first(tmp_path):
    shown = sweep(["--help"], tmp_path)
    assert shown.returncode == 0
    own, _, hydras = shown.stdout.partition("powered by Hydra")
    assert hydras  # Hydra's help still follows
    for text in ("lr is log2 of eta_base", "a,...,b", "a:b", "a,b,c", "experiment=", "param=",
                 "optimizer=", "width=", "depth=", "seed=", "store=", "jobs=", "cluster=", "search=",
                 "force=true", "verbose=true"):
        assert text in own, text


def test_status_shows_the_grid_the_sweep_asked_for(tmp_path):
    """A 2x2 sweep of an experiment whose default grid is 3x3 shows as 2x2; a store without the
    sweep's ask (an older one) still shows the experiment's default grid."""
    done = sweep(["-m", "experiment=smoke", "store=store", "width=32,64", "lr=-9,-8", "steps=2"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]

    def grid(store):
        shown = subprocess.run([sys.executable, "-m", "sweeper", "status", "--store", str(store)], cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        start = next(i for i, line in enumerate(lines) if "width \\ lr" in line)
        return [line.split() for line in lines[start:] if line.startswith("    ")]

    assert grid(tmp_path / "store") == [["width", "\\", "lr", "-9", "-8"], ["32", "done", "done"],
                                        ["64", "done", "done"]]
    shutil.rmtree(tmp_path / "store" / "asked")  # as a store written before sweeps recorded it
    assert grid(tmp_path / "store") == [["width", "\\", "lr", "-9", "-8", "-7"], ["32", "done", "done", "."],
                                        ["64", "done", "done", "."], ["128", ".", ".", "."]]
