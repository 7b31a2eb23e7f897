"""Local sweeps with two worker processes (jobs=2): each worker takes cell after cell, and the
guarantees of a sequential sweep hold: claims, one trainer per cell, progress, Ctrl-C and kill -9
followed by a rerun that trains nothing finished."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import socket

from sweeper.store.claims import CLAIMS, Claim, is_live
from sweeper.jobs.local_pool import gpu_slots, resolve_jobs, visible_gpus
from sweeper.store.index import load_store
from sweeper.store.records import ATTEMPTS, read_record, records_dir

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# Three cells of the smoke preset long enough (steps) to be caught training, checkpointed every 5.
# Long enough (~10 s a cell on a quiet core) that a test acts on cells while they train.
LONG_STEPS = 3000
LONG = ["-m", "experiment=smoke", "width=32", "lr=-10:-8", f"steps={LONG_STEPS}", "checkpoint_interval=50", "jobs=2"]


def sweep(args, cwd, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def start(args, cwd, log):
    """A sweep in its own session (its own process group, as a terminal's job)."""
    return subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), *args], cwd=cwd, env=ENV,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def claims(store):
    """Cell key -> pid of the process training it now."""
    folder = store / CLAIMS
    out = {}
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            out[path.stem] = json.loads(path.read_text())["pid"]
        except (OSError, ValueError):
            pass
    return out


def wait_for(predicate, timeout_s, what):
    end = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < end, what
        time.sleep(0.1)
    return value


def gone(pid):
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def snapshot(store):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in records_dir(store).glob("*.json")}


def trained_keys(stdout):
    return {line.split()[1] for line in stdout.splitlines()
            if line.startswith("cell ") and " not trained here" not in line and "already" not in line}


def attempt_counts(store):
    return {d.name: len(list(d.glob("*.json"))) for d in (store / ATTEMPTS).iterdir()}


def test_jobs_auto_is_the_cores_over_the_threads_of_a_cell_and_bad_values_are_refused(tmp_path):
    assert resolve_jobs("auto", threads=1, cores=2) == 2
    assert resolve_jobs("auto", threads=2, cores=16) == 8
    assert resolve_jobs("auto", threads=4, cores=2) == 1
    assert resolve_jobs("auto", threads=0, cores=16) == 1  # torch's default takes every core
    assert resolve_jobs("3", threads=1, cores=2) == 3
    for bad in ("0", "-2", "two"):
        with pytest.raises(ValueError, match="jobs=auto"):
            resolve_jobs(bad, threads=1, cores=2)
    # cells on CUDA: one per GPU group, whatever the cores; an explicit count stands
    assert resolve_jobs("auto", threads=1, cores=16, gpus=1) == 1
    assert resolve_jobs("auto", threads=1, cores=16, gpus=8, gpus_per_cell=2) == 4
    assert resolve_jobs("auto", threads=1, cores=16, gpus=2, gpus_per_cell=4) == 1
    assert resolve_jobs("3", threads=1, cores=16, gpus=1) == 3
    run = sweep(["-m", "experiment=smoke", "width=32", "lr=-9", "jobs=two", "store=s"], tmp_path)
    assert run.returncode != 0 and "jobs=two: give a number of cells" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "s" / "records").exists()


def test_each_worker_sees_only_its_own_gpus_and_cpu_cells_see_none(monkeypatch):
    assert gpu_slots(["0", "1", "2", "3"], 2, 2) == ["0,1", "2,3"]
    assert gpu_slots(["4", "6"], 1, 3) == ["4", "6", "4"]  # jobs=3 on two GPUs: shared round robin
    assert gpu_slots(["0"], 2, 1) == ["0"]  # too few for a cell: the rank check names it later
    assert gpu_slots([], 1, 2) == [None, None]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpus("cpu") == []
    import torch

    assert visible_gpus("auto") == ["3", "5"][:torch.cuda.device_count()]


def test_two_workers_train_cells_side_by_side_each_once_with_progress(tmp_path):
    store = tmp_path / "store"
    args = ["-m", "experiment=smoke", "width=32,64", "lr=-10:-9", "steps=60", "jobs=2", f"store={store}"]
    with open(tmp_path / "log", "w") as log:
        proc = start(args, tmp_path, log)
        try:  # two cells claimed at once, by two processes that are not the sweep
            pids = wait_for(lambda: len(set(claims(store).values())) == 2 and claims(store), 180,
                            "two cells never trained at once")
            assert proc.pid not in pids.values()
            assert proc.wait(timeout=300) == 0, (tmp_path / "log").read_text()[-3000:]
        finally:
            proc.kill()
    out = (tmp_path / "log").read_text()
    assert "[sweep] 2 cells at a time in worker processes (jobs=2)" in out
    progress = [line for line in out.splitlines() if "cells finished" in line]
    assert len(progress) == 4 and progress[0].endswith(" left") and progress[-1].endswith("| done")
    frame = load_store(store)
    assert len(frame) == 4 and set(frame["status"]) == {"ok"} and (frame["steps_done"] == 60).all()
    assert set(attempt_counts(store).values()) == {1} and not claims(store)
    assert all(gone(pid) for pid in pids.values())  # the workers end with the sweep


@pytest.mark.parametrize("how", ["sweep alone", "process group"])
def test_a_two_worker_sweep_killed_with_kill_9_reruns_with_nothing_finished_trained_again(tmp_path, how):
    """kill -9 of the sweep alone: its workers notice, checkpoint their cells and end; of its
    process group (what a terminal's job control does): the workers die with it. Either way the
    rerun trains exactly the cells without a record, from their checkpoints."""
    store = tmp_path / "store"
    # cells long enough (~2 s) that the kill finds both workers in training loops, which checkpoint
    args = ["-m", "experiment=smoke", "width=32", "lr=-11:-7", "steps=150", "checkpoint_interval=5",
            "jobs=2", f"store={store}"]
    with open(tmp_path / "log", "w") as log:
        proc = start(args, tmp_path, log)
        try:
            wait_for(lambda: len(list(records_dir(store).glob("*.json"))) >= 1 and len(claims(store)) == 2,
                     240, "no record while two cells train")
            workers = set(claims(store).values())
        finally:
            if how == "sweep alone":
                proc.kill()
            else:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    before = snapshot(store)
    assert 1 <= len(before) < 5, "kill came too late to test a resume"
    wait_for(lambda: all(gone(pid) for pid in workers), 120, "the killed sweep's workers kept running")
    if how == "sweep alone":  # they stopped as on a preemption: checkpoint, no record, claim released
        assert "checkpoint saved at step" in (tmp_path / "log").read_text()
        assert not claims(store)
    assert len(snapshot(store)) == len(before)

    rerun = sweep(args, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"skipping {len(before)} of 5 cells already in the store" in rerun.stdout
    after = snapshot(store)
    assert len(after) == 5 and {name: after[name] for name in before} == before, rerun.stdout[-3000:]
    assert trained_keys(rerun.stdout) == {n[:-5] for n in after} - {n[:-5] for n in before}
    if how == "sweep alone":
        assert "resuming from" in rerun.stdout + rerun.stderr
    frame = load_store(store)
    assert set(frame["status"]) == {"ok"} and (frame["steps_done"] == 150).all()
    assert set(attempt_counts(store).values()) == {1}


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="zombies are read from /proc")
def test_a_claim_whose_trainer_is_a_zombie_is_dead():
    # A worker killed with its sweep (kill -9 of the process group) stays a zombie until something
    # reaps it; its claim must not hold the cell meanwhile (a rerun then trained nothing of it).
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    claim = Claim("k", socket.gethostname(), child.pid, None, "t", time.time())
    try:
        assert is_live(claim)
        child.kill()
        deadline = time.time() + 10
        while not gone(child.pid) and time.time() < deadline:
            time.sleep(0.05)
        assert gone(child.pid) and os.path.exists(f"/proc/{child.pid}")  # a zombie, not yet reaped
        assert not is_live(claim)
    finally:
        child.kill()
        child.wait()


def test_ctrl_c_stops_both_workers_their_cells_checkpoint_and_a_rerun_resumes_them(tmp_path):
    store = tmp_path / "store"
    args = [*LONG, f"store={store}"]
    with open(tmp_path / "log", "w") as log:
        proc = start(args, tmp_path, log)
        try:
            workers = wait_for(lambda: len(claims(store)) == 2 and claims(store), 240, "cells never trained")
            wait_for(lambda: len(list(store.glob("runs/*/checkpoint.pt"))) == 2, 120, "no checkpoints")
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
            assert proc.wait(timeout=120) != 0
        finally:
            proc.kill()
    wait_for(lambda: all(gone(pid) for pid in workers.values()), 30, "a worker outlived Ctrl-C")
    assert not claims(store) and not records_dir(store).exists()  # stopped, not failed
    assert sorted(p.parent.name for p in store.glob("runs/*/checkpoint.pt")) == sorted(workers)

    rerun = sweep(args, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stderr.count("resuming from") == 2
    frame = load_store(store)
    assert len(frame) == 3 and set(frame["status"]) == {"ok"} and (frame["steps_done"] == LONG_STEPS).all()
    for key in workers:  # the interrupted cells' curves run on from the checkpoint, without a gap
        steps = [s for s, _ in read_record(store, key)["curves"]["train"]]
        assert steps == sorted(set(steps)) and steps[-1] == LONG_STEPS


def test_two_sweeps_of_two_workers_on_one_store_train_each_cell_once(tmp_path):
    store = tmp_path / "store"
    args = ["-m", "experiment=smoke", "width=32", "lr=-11:-8", "steps=30", "jobs=2", f"store={store}"]
    logs = [open(tmp_path / f"log{i}", "w") for i in range(2)]
    procs = [start(args, tmp_path, log) for log in logs]
    try:
        codes = [p.wait(timeout=400) for p in procs]
    finally:
        for p, log in zip(procs, logs):
            p.kill()
            log.close()
    outs = [(tmp_path / f"log{i}").read_text() for i in range(2)]
    assert codes == [0, 0], "\n".join(o[-2000:] for o in outs)
    assert attempt_counts(store) == {key: 1 for key in load_store(store)["key"]}
    assert len(load_store(store)) == 4
    assert not trained_keys(outs[0]) & trained_keys(outs[1])
    assert len(trained_keys(outs[0]) | trained_keys(outs[1])) == 4
