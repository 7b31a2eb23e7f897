"""Times `python -m analysis report` on a store of 10 000 records (target: under 10 s).

    python benchmarks/report_speed.py [--records 10000] [--keep DIR]

The store is a plausible big study: 3 params x 2 optimizers x LayerNorm on/off, each with a width
sweep (8 widths at depth 4) and a depth sweep (8 depths at width 256), 12 learning rates, seeds
to reach the record count; each record carries training curves like a real run (122 train points,
7 val points). Records are written with the store's own API. The report runs in a fresh process,
twice: first on a cold store (no index cache), then warm; load_store is also timed alone.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sweeper.store.schema import make_record  # noqa: E402
from sweeper.store.index import load_store  # noqa: E402
from sweeper.store.records import write_record  # noqa: E402

WIDTHS = [64, 128, 256, 512, 1024, 2048, 4096, 8192]
DEPTHS = [2, 4, 8, 16, 32, 64, 128, 256]
LRS = list(range(-13, -1))


def cells():
    sizes = sorted({(w, 4) for w in WIDTHS} | {(256, d) for d in DEPTHS})
    for param, optimizer, layernorm in itertools.product(("sp", "mup", "mup_k1"), ("muon_kimi", "adamw"), (True, False)):
        for (width, depth), lr in itertools.product(sizes, LRS):
            yield {"param": param, "optimizer": optimizer, "layernorm": layernorm, "width": width,
                   "depth": depth, "lr": float(lr), "steps": 1221}


def synthetic_loss(cell: dict, rng: np.random.Generator) -> float:
    """A bowl in log2 eta whose optimum drifts with width under SP; explodes far right of it."""
    shift = math.log2(cell["width"] / 256) if cell["param"] == "sp" else 0.0
    distance = cell["lr"] - (-7.0 - shift)
    if distance > 3:
        return math.nan
    size = math.log2(cell["width"]) + 0.5 * math.log2(cell["depth"])
    return 6.0 - 0.2 * size + 0.08 * distance**2 + (2.0 * distance if distance > 1.5 else 0) + rng.normal(0, 0.005)


def build_store(store: Path, n_records: int) -> None:
    rng = np.random.default_rng(0)
    grid = list(cells())
    steps = np.arange(0, 1221, 10)
    for i in range(n_records):
        cell = {**grid[i % len(grid)], "seed": i // len(grid)}
        loss = synthetic_loss(cell, rng)
        train = [[int(s), float(10 - (10 - loss) * (1 - math.exp(-s / 200)))] for s in steps] if loss == loss else []
        record = make_record(
            cell, "ok" if loss == loss else "diverged", experiment="bench",
            metrics={"val_loss": None if loss != loss else loss, "steps_done": 1221},
            curves={"train": train, "val": train[::20]},
            timings={"wall_time_s": 100.0, "tokens_per_s": 1e5},
        )
        write_record(store, record)


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of the command (its forkserver's workers are not counted)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, help="build the store here and keep it (reused when there)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        store, out = root / "store", root / "report"
        if (store / "records").is_dir():
            print(f"reusing the store in {store}")
        else:
            start = time.perf_counter()
            build_store(store, args.records)
            print(f"built a store of {args.records} records in {time.perf_counter() - start:.1f} s")
        (store / ".cache").exists() and shutil.rmtree(store / ".cache")  # the first run is cold
        report = [sys.executable, "-m", "analysis", "report", "--store", str(store), "--out", str(out)]
        cold = timed(report)
        warm = timed(report)
        tables_only = timed([*report, "--no-figures"])
        serial = timed([*report, "--jobs", "1"])  # last: a report replaces the one before, figures too
        start = time.perf_counter()
        frame = load_store(store)
        load = time.perf_counter() - start
        tables = len(list((out / "tables").glob("*.md")))
        figures = len(list((out / "figures").glob("*.png")))
        print(f"report of {len(frame)} records: {tables} tables, {figures} figures as PNG+PDF; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f} (other work inflates wall time, not CPU time)")
        print(f"  cold store (index built), --jobs {os.cpu_count()}: {cold[0]:.2f} s wall  (target < 10 s)")
        print(f"  warm store, --jobs {os.cpu_count()}:               {warm[0]:.2f} s wall")
        print(f"  warm store, --jobs 1:               {serial[0]:.2f} s wall, {serial[1]:.2f} s CPU")
        print(f"  warm store, --no-figures:           {tables_only[0]:.2f} s wall, {tables_only[1]:.2f} s CPU")
        print(f"  load_store alone (warm, in process): {load:.2f} s wall")


if __name__ == "__main__":
    main()
