"""What a sweep costs besides training, and how fast a big store loads.

    python benchmarks/sweep_overhead.py [--cells 24] [--records 10000] [--jobs 1]

1. Cells with zero steps through the real command line (Hydra multirun, our sweeper, the basic
   launcher -- in the sweep's process with --jobs 1, else that many worker processes -- the job
   entry, record writes): wall time per cell, and the marginal cost per cell (the same sweep with
   every cell skipped subtracted). Target: < 1 s per cell.
2. load_store on a store of N records (with curves like a 1221-step run's): cold (no index),
   warm (index up to date) and after 1% of the records changed. Target: < 2 s.
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

from sweeper.store.schema import make_record  # noqa: E402
from sweeper.store.index import load_store  # noqa: E402
from sweeper.store.records import write_record  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402


def sweep_overhead(cells: int, workdir: Path, jobs: int) -> None:
    store = workdir / "sweep_store"
    lrs = f"lr=-{cells}:-1"
    args = [sys.executable, str(ROOT / "sweep.py"), "-m", "experiment=smoke", "width=32", lrs,
            "steps=0", "eval_batches=1", f"jobs={jobs}", f"store={store}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run(args, cwd=workdir, env=env, check=True, capture_output=True)
    total = time.perf_counter() - t0
    frame = load_store(store)
    assert len(frame) == cells and set(frame["status"]) == {"ok"}, frame["status"].value_counts()
    in_trainer = frame["wall_time_s"].sum()
    t0 = time.perf_counter()
    subprocess.run(args, cwd=workdir, env=env, check=True, capture_output=True)
    rerun = time.perf_counter() - t0
    print(f"sweep of {cells} zero-step cells, jobs={jobs}: {total:.1f} s wall, {total / cells:.2f} s per cell "
          f"(all but training steps: Hydra, planning, job setup, data and model build, one eval, "
          f"record write; the trainer's timed loop took {in_trainer / cells:.3f} s per cell)")
    print(f"same sweep again, every cell skipped: {rerun:.1f} s (process start, imports, planning)")
    print(f"  => marginal cost per cell outside training: {(total - rerun) / cells:.2f} s "
          f"(target < 1 s)")


def curve(steps: int, every: int) -> list:
    return [[s, 10.0 / (1 + s)] for s in range(every, steps + 1, every)]


def store_load(records: int, workdir: Path) -> None:
    store = workdir / "big_store"
    t0 = time.perf_counter()
    curves = {"train": curve(1221, 10), "val": curve(1221, 200)}
    for i in range(records):
        cfg = TrainConfig(width=64 * (1 + i % 64), depth=4 + i // 64 % 8, lr=-12 + (i // 512) * 0.25,
                          seed=i).to_dict()
        write_record(store, make_record(cfg, "ok", experiment="bench",
                                        metrics={"val_loss": 3.0, "train_loss": 3.1},
                                        curves=curves, extra={"i": i}))
    print(f"wrote {records} records in {time.perf_counter() - t0:.1f} s")
    timings = {}
    for label in ("cold (no index)", "warm (index up to date)"):
        t0 = time.perf_counter()
        frame = load_store(store)
        timings[label] = time.perf_counter() - t0
        assert len(frame) == records
    for i in range(0, records, 100):  # 1% rewritten
        cfg = TrainConfig(width=64 * (1 + i % 64), depth=4 + i // 64 % 8, lr=-12 + (i // 512) * 0.25,
                          seed=i).to_dict()
        write_record(store, make_record(cfg, "diverged", experiment="bench", curves=curves))
    t0 = time.perf_counter()
    frame = load_store(store)
    timings["after 1% changed"] = time.perf_counter() - t0
    assert (frame["status"] == "diverged").sum() == len(range(0, records, 100))
    for label, seconds in timings.items():
        print(f"load_store of {records} records, {label}: {seconds:.2f} s (target < 2 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=24)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=1, help="cells at once (the sweep's jobs=)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep_overhead(args.cells, Path(tmp), args.jobs)
        store_load(args.records, Path(tmp))


if __name__ == "__main__":
    main()
