"""A cell of two ranks on the local Slurm cluster (cluster=local, gpus_per_cell=2): one job of two
tasks whose ranks come from submitit's environment; requeued mid-run it resumes from rank 0's
checkpoint to the record of an uninterrupted run; it is recorded once and a rerun submits nothing."""
from __future__ import annotations

import os
import re
import time
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper.store.queue import read_entries
from sweeper.store.index import load_store
from sweeper.store.records import read_record

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STEPS = 120
CELL = ["-m", "experiment=smoke", "width=32", "lr=-8", f"steps={STEPS}", "batch_size=32", "seq_len=256",
        "log_interval=1", "gpus_per_cell=2"]


def sweep(args: list[str], cwd: Path, **kw):
    return subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), *CELL, *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def task_log(store: Path, job_id: str, task: int, stream: str = "err") -> str:
    """A task's submitit log (task t is rank t; the files are appended to across requeues)."""
    paths = list(store.glob(f"logs/*/.submitit/{job_id}/{job_id}_{task}_log.{stream}"))
    return paths[0].read_text() if paths else ""


def steps_logged(store: Path, job_id: str, task: int) -> int:
    steps = re.findall(r"^step (\d+)/", task_log(store, job_id, task), re.M)
    return int(steps[-1]) if steps else 0


# Two ways Slurm preempts: `scontrol requeue` (SIGTERM to every task, then Slurm requeues the job)
# and SIGUSR2 to every task (submitit's path: rank 0's handler requeues the job, the others' do not).
PREEMPT = {"requeue": ["scontrol", "requeue"], "usr2": ["scancel", "--signal=USR2"]}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", sorted(PREEMPT))
def test_a_two_rank_cell_preempted_mid_run_ends_with_the_record_of_an_uninterrupted_run(
        slurm_cluster, tmp_path, wait_until, how):
    store = tmp_path / "store"
    reference = sweep(["store=reference"], tmp_path)  # the same two ranks, locally, never stopped
    proc = sweep([f"store={store}", "cluster=local"], tmp_path)
    try:
        wait_until(lambda: proc.poll() is None and len(read_entries(store)) == 1, 60, "the cell's job queued")
        (entry,) = read_entries(store).values()
        job_id = entry["job_id"]
        # both ranks train (task 1 is rank 1: it logs its own steps)
        wait_until(lambda: min(steps_logged(store, job_id, t) for t in (0, 1)) >= 5, 120, "both ranks training")
        subprocess.run([*PREEMPT[how], job_id], check=True)
        out, err = proc.communicate(timeout=200)
        ref_out, ref_err = reference.communicate(timeout=200)
    finally:
        proc.kill()
        reference.kill()
    assert proc.returncode == 0, err[-3000:]
    assert reference.returncode == 0, ref_err[-3000:]
    rank0, rank1 = task_log(store, job_id, 0), task_log(store, job_id, 1)
    saved = re.findall(r"checkpoint saved at step (\d+)", rank0)
    resumed = re.findall(r"resuming from .*checkpoint\.pt at step (\d+)", rank0)
    assert len(saved) == 1 and resumed == saved and 0 < int(saved[0]) < STEPS, rank0[-2000:]
    # rank 1 stopped at the same step and resumed from rank 0's checkpoint
    assert re.findall(r"resuming from .*checkpoint\.pt at step (\d+)", rank1) == saved, rank1[-2000:]

    (key,) = load_store(store)["key"]
    assert list(load_store(tmp_path / "reference")["key"]) == [key]
    record, uninterrupted = read_record(store, key), read_record(tmp_path / "reference", key)
    assert record["status"] == "ok" and record["runtime"]["slurm"]["job_id"] == job_id
    assert record["curves"] == uninterrupted["curves"]
    assert record["metrics"] == uninterrupted["metrics"]
    # recorded once, by rank 0: the job's line for the cell is rank 0's, rank 1 writes none
    assert len(re.findall(rf"^cell {key}", task_log(store, job_id, 0, "out"), re.M)) == 1
    assert not re.search(rf"^cell {key}", task_log(store, job_id, 1, "out"), re.M)

    submitted = set(store.glob("logs/*/.submitit/*"))
    again = sweep([f"store={store}", "cluster=local"], tmp_path)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err[-3000:]
    assert "skipping 1 of 1 cells already in the store" in out and "nothing to run" in out
    assert set(store.glob("logs/*/.submitit/*")) == submitted  # no job submitted


@pytest.mark.timeout(300)
def test_a_killed_rank_fails_its_cell_naming_the_rank_and_its_log(slurm_cluster, tmp_path, wait_until):
    store = tmp_path / "store"
    proc = sweep([f"store={store}", "cluster=local", "steps=100000"], tmp_path)
    try:
        wait_until(lambda: proc.poll() is None and len(read_entries(store)) == 1, 60, "the cell's job queued")
        (entry,) = read_entries(store).values()
        job_id = entry["job_id"]
        wait_until(lambda: steps_logged(store, job_id, 1) >= 3, 120, "rank 1 training")
        pid = int(re.search(r"rank 1 of 2: pid (\d+)", task_log(store, job_id, 1)).group(1))
        os.kill(pid, 9)
        killed = time.monotonic()
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - killed
    finally:
        proc.kill()
    (key,) = load_store(store)["key"]
    record = read_record(store, key)
    assert record["status"] == "failed" and record["error"]["job_id"] == job_id
    message = record["error"]["message"]
    assert message.startswith("rank 1 of 2 died or stopped answering"), message
    assert f"{job_id}_1_log.err" in message and "step " in message  # rank 1's log and its last lines
    assert took < 90  # not the collective timeout (600 s): the cell fails as soon as the rank dies
