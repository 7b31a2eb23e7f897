"""The sweep through the real command line: Hydra multirun, our sweeper, the trainer, the store."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sweeper.store.index import load_store

from sweeper.store.records import read_record, records_dir, run_dir

ROOT = Path(__file__).resolve().parent.parent
# The design's line on a small grid; steps=4 keeps each cell around a second on 2 CPU cores; two
# worker processes (jobs=2), as jobs=auto gives the smoke preset on 2 cores.
SMOKE = ["-m", "experiment=smoke", "width=32,...,128", "lr=-10:-8", "depth=2", "steps=4", "jobs=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def sweep(args, cwd, timeout=240):
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def snapshot(store):
    """Record file -> (mtime, content): a cell trained again would change both."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in records_dir(store).glob("*.json")}


def trained_keys(stdout):
    """Keys of the cells a sweep trained (each job prints 'cell <key> ...')."""
    return {line.split()[1] for line in stdout.splitlines() if line.startswith("cell ")}


def test_the_design_line_fills_the_store_and_a_rerun_trains_nothing(tmp_path):
    first = sweep([*SMOKE, "store=store"], tmp_path)  # relative: resolved against the launch dir
    assert first.returncode == 0, first.stderr[-3000:]
    store = tmp_path / "store"
    frame = load_store(store)
    assert len(frame) == 9 and set(frame["status"]) == {"ok"}
    assert sorted(zip(frame["width"], frame["lr"])) == [
        (w, lr) for w in (32, 64, 128) for lr in (-10.0, -9.0, -8.0)]
    assert set(frame["experiment"]) == {"smoke"} and (frame["steps_done"] == 4).all()
    progress = [line for line in first.stdout.splitlines() if "cells finished" in line]
    assert len(progress) == 9  # a line after each cell: done / total, by status, elapsed, remaining
    assert progress[0].startswith("[sweep] 1/9 cells finished: 1 ok, 0 diverged, 0 failed | elapsed")
    assert progress[0].endswith(" left") and progress[-1].endswith("| done")
    assert len(trained_keys(first.stdout)) == 9

    before = snapshot(store)
    again = sweep([*SMOKE, f"store={store}"], tmp_path / "store")  # another cwd, absolute store
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipping 9 of 9 cells already in the store" in again.stdout
    assert trained_keys(again.stdout) == set() and snapshot(store) == before


def test_a_killed_sweep_resumes_without_losing_or_repeating_a_cell(tmp_path):
    store = tmp_path / "store"
    args = ["-m", "experiment=smoke", "width=32,64", "lr=-10:-8", "steps=20",
            "checkpoint_interval=5", "jobs=2", f"store={store}"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len(list(records_dir(store).glob("*.json"))) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "the sweep wrote no records"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = snapshot(store)
    assert 2 <= len(before) < 6, "kill came too late to test a resume"

    resumed = sweep(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"skipping {len(before)} of 6 cells already in the store" in resumed.stdout
    after = snapshot(store)
    assert len(after) == 6
    assert {name: after[name] for name in before} == before  # finished cells untouched
    assert trained_keys(resumed.stdout) == {n[:-5] for n in after} - {n[:-5] for n in before}
    frame = load_store(store)
    assert len(frame) == 6 and set(frame["status"]) == {"ok"} and (frame["steps_done"] == 20).all()
    for key in frame["key"]:
        assert read_record(store, key)["curves"]["train"][-1][0] == 20
    # Checkpoints were written every 5 steps; a finished cell's goes with its record, unless kept.
    assert not list(store.glob("runs/*/checkpoint.pt"))
    kept = sweep(["-m", "experiment=smoke", "width=32", "lr=-10", "steps=20", "checkpoint_interval=5",
                  "force=true", "keep_checkpoints=true", f"store={store}"], tmp_path)
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert [p.parent.name for p in store.glob("runs/*/checkpoint.pt")] == list(trained_keys(kept.stdout))


def test_a_failing_cell_is_recorded_the_rest_go_on_a_rerun_retries_it_and_force_redoes_all(
        tmp_path, sweep_cell_key):
    store = tmp_path / "store"
    args = ["-m", "experiment=smoke", "width=32", "lr=-10:-8", "steps=2", f"store={store}"]
    bad = sweep_cell_key(["experiment=smoke", "width=32", "lr=-9", "steps=2"])
    blocker = run_dir(store, bad)  # a file where the cell's run dir must go: its training raises
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory")

    first = sweep([*args, "hydra.sweeper.max_batch_size=3"], tmp_path)  # one batch, watched
    assert first.returncode != 0
    assert [line.split(" | ")[0] for line in first.stdout.splitlines() if "cells finished" in line][-1] \
        == "[sweep] 3/3 cells finished: 2 ok, 0 diverged, 1 failed"
    assert "1 of 3 cells failed" in first.stderr and "FileExistsError" in first.stderr
    frame = load_store(store).set_index("key")
    assert frame["status"].value_counts().to_dict() == {"ok": 2, "failed": 1}
    error = read_record(store, bad)["error"]
    assert error["type"] == "FileExistsError" and "Traceback" in error["log_tail"]

    status = subprocess.run([sys.executable, "-m", "sweeper", "status", "--store", str(store)],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "2 ok, 0 diverged, 1 failed" in status.stdout
    assert "FileExistsError" in status.stdout and "FAIL" in status.stdout

    blocker.unlink()
    retry = sweep(args, tmp_path)
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert "skipping 2 of 3" in retry.stdout and trained_keys(retry.stdout) == {bad}
    assert set(load_store(store)["status"]) == {"ok"}

    before = snapshot(store)
    forced = sweep([*args, "force=true"], tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "skipping" not in forced.stdout and len(trained_keys(forced.stdout)) == 3
    after = snapshot(store)
    assert after.keys() == before.keys() and all(after[n] != before[n] for n in before)
    assert (load_store(store)["steps_done"] == 2).all()  # trained anew, not resumed at the end


def test_bad_grids_stop_before_anything_runs_with_the_fix(tmp_path):
    typo = sweep(["-m", "experiment=smoke", "widht=32,64", "store=s"], tmp_path)
    assert typo.returncode != 0 and "did you mean 'width'" in typo.stderr
    reversed_range = sweep(["-m", "experiment=smoke", "lr=-8:-10", "store=s"], tmp_path)
    assert reversed_range.returncode != 0 and "write it as -10:-8" in reversed_range.stderr
    heads = sweep(["-m", "experiment=smoke", "width=96,128", "lr=-9", "store=s"], tmp_path)
    assert heads.returncode != 0
    assert "width=96 cannot be split into attention heads" in heads.stderr
    assert not (tmp_path / "s" / "records").exists()


def test_submitit_local_runs_cells_side_by_side(tmp_path):
    store = tmp_path / "store"
    run = sweep(["-m", "experiment=smoke", "width=32", "lr=-10,-9", "steps=2", "store=store",
                 "hydra/launcher=submitit_local"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2/2 cells finished" in run.stdout
    frame = load_store(store)
    assert len(frame) == 2 and set(frame["status"]) == {"ok"}


def test_a_preset_edited_mid_sweep_trains_no_unplanned_cell(tmp_path):
    """Hydra composes each job's config from the files again when the job starts (in each of the two
    workers too): a preset edited while its sweep runs must not train and record cells the sweep
    never planned."""
    import json
    import shutil

    app = tmp_path / "app"
    shutil.copytree(ROOT / "conf", app / "conf")
    shutil.copy(ROOT / "sweep.py", app / "sweep.py")
    preset = app / "conf" / "experiment" / "edited.yaml"
    preset.write_text((ROOT / "conf" / "experiment" / "smoke.yaml").read_text().replace("steps: 20", "steps: 300"))
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, str(app / "sweep.py"), "-m", "experiment=edited", "width=32",
                             "lr=-10:-7", "jobs=2", "verbose=true", f"store={store}"], cwd=tmp_path, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, started = [], 0
    for line in proc.stdout:  # edit the preset while the first 2 of the 4 cells train
        output.append(line)
        started += line.startswith("step 1/300")
        if started == 2:
            preset.write_text(preset.read_text().replace("steps: 300", "steps: 301"))
            break
    output += proc.stdout.readlines()
    assert proc.wait(timeout=240) != 0, "".join(output)
    records = [json.loads(p.read_text()) for p in records_dir(store).glob("*.json")]
    assert sorted((r["config"]["lr"], r["config"]["steps"], r["status"]) for r in records) == [
        (-10.0, 300, "ok"), (-9.0, 300, "ok"), (-8.0, 300, "failed"), (-7.0, 300, "failed")]
    failed = [r for r in records if r["status"] == "failed"]
    assert all("a config file changed after the sweep started" in json.dumps(r["error"]) for r in failed)
    assert not (store / "attempts").exists() or all(
        json.loads(p.read_text())["config"]["steps"] == 300 for p in (store / "attempts").rglob("*.json"))
