"""A store whose records/ turns unwritable mid-sweep (a full disk, a lost quota): how soon the sweep
ends, with what exit code, and what the run after it (records/ writable again) trains.

    sudo python benchmarks/unwritable_records.py

Runs issue 26's two commands on tiny smoke cells, a plain sweep and a transfer search
(``width=32,64 lr=-10:-7 steps=40 warmup_steps=1``), each into a fresh store whose records/ is made
immutable (``chattr +i``, so even root cannot write there) once the first cell is being trained.
Target: each ends in under a minute with a non-zero exit, and the rerun trains none of the cells
whose attempts finished (their records are written from the attempts).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = ["experiment=smoke", "width=32,64", "lr=-10:-7", "steps=40", "warmup_steps=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def sweep(args: list[str], store: Path, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "-m", *args, f"store={store}"],
                          cwd=store.parent, env=ENV, capture_output=True, text=True, timeout=timeout)
    return done, time.perf_counter() - started


def trained(stdout: str) -> set[str]:
    return {line.split()[1] for line in stdout.splitlines() if line.startswith("cell ") and " width=" in line}


def freeze_when_training(store: Path, stop: threading.Event) -> None:
    while not stop.wait(0.01):
        if any((store / "claims").glob("*.json")):
            subprocess.run(["chattr", "+i", str(store / "records")], check=True)
            return


def case(name: str, args: list[str], workdir: Path) -> None:
    store = workdir / name / "store"
    (store / "records").mkdir(parents=True)
    stop = threading.Event()
    watcher = threading.Thread(target=freeze_when_training, args=(store, stop))
    watcher.start()
    try:
        broken, took = sweep(args, store, timeout=600)
    finally:
        stop.set()
        watcher.join()
        subprocess.run(["chattr", "-i", str(store / "records")], check=True)
    finished = {d.name for d in (store / "attempts").iterdir() if any(d.glob("*.json"))}
    again, again_took = sweep(args, store, timeout=600)
    retrained = trained(again.stdout) & finished
    print(f"{name}: records/ unwritable after the first claim: ended in {took:.1f} s, exit "
          f"{broken.returncode}, {len(trained(broken.stdout))} cell(s) trained, {len(finished)} attempt(s) "
          f"kept without a record")
    print(f"{name}: rerun, records/ writable: exit {again.returncode} in {again_took:.1f} s, "
          f"{len(trained(again.stdout))} cell(s) trained, {len(retrained)} of them trained before "
          f"(target 0)")


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("needs root: records/ is made unwritable with chattr +i")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        case("plain sweep", GRID, Path(tmp))
        case("transfer search", [*GRID, "search=transfer"], Path(tmp))


if __name__ == "__main__":
    main()
