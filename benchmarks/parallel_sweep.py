"""A local sweep with its cells side by side (jobs=N) against the same sweep one cell after another
(jobs=1), both measured in this one run, each into its own scratch store.

    python benchmarks/parallel_sweep.py                       # the README's main command's grid
    python benchmarks/parallel_sweep.py --jobs 2 --set width=16,32 --set param=mup   # a subset

Prints, per side: wall time of the whole command (process start, planning, workers, every cell),
the trainers' own time (each record's wall_time_s: data, model, training loop, eval), and the time
outside training per cell: (jobs × wall − Σ trainer time) / cells, what each cell costs a core
besides its own run. Then the speed-up. Targets (issue 21): ≥ 1.8× on 2 cores for cpu_width,
< 0.3 s per cell outside training. The machine's load average is printed before and after: on a
shared machine the figure is only as good as the load was steady.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sweeper.store.index import load_store  # noqa: E402


def run(jobs: int, overrides: list[str], store: Path) -> dict:
    args = [sys.executable, str(ROOT / "sweep.py"), "-m", *overrides, f"jobs={jobs}", f"store={store}"]
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=store.parent, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"jobs={jobs} failed:\n{proc.stderr[-3000:]}")
    frame = load_store(store)
    trained = float(frame["wall_time_s"].sum())
    cells = len(frame)
    return {"jobs": jobs, "wall": wall, "cells": cells, "trained": trained,
            "outside": (jobs * wall - trained) / cells}


def show(side: dict) -> str:
    return (f"jobs={side['jobs']}: {side['cells']} cells in {side['wall']:.1f} s wall; trainers "
            f"{side['trained']:.1f} s in all; outside training {side['outside']:.2f} s per cell")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="cpu_width")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a sweep override (repeatable); default: param=sp,mup")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    overrides = [f"experiment={args.experiment}", *(args.set or ["param=sp,mup"])]
    print(f"sweep: python sweep.py -m {' '.join(overrides)}; {os.cpu_count()} cores; "
          f"load average before {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        sequential = run(1, overrides, Path(tmp) / "sequential")
        print(show(sequential), flush=True)
        parallel = run(args.jobs, overrides, Path(tmp) / "parallel")
        print(show(parallel))
    print(f"speed-up jobs={args.jobs} over jobs=1: {sequential['wall'] / parallel['wall']:.2f}x "
          f"(target >= 1.8x on 2 cores); load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
