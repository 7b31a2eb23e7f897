"""Sweeps on the local Slurm cluster (cluster=local): each cell is a Slurm job that writes its own
record; a finished grid submits nothing again; a cancelled cell is recorded as failed and retried
alone; a preempted cell resumes from its checkpoint; status shows the queue; search=transfer runs
in rounds of job arrays and resumes from the store."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from analysis.optima import row_optimum
from analysis.analysed import analyse
from sweeper.store.queue import ENTRY, read_entries, write_entry
from sweeper.store.schema import make_record
from sweeper.store.index import load_store
from sweeper.store.records import read_record, run_dir, write_record

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
GRID = ["-m", "experiment=smoke", "width=32,64", "lr=-9,-8", "cluster=local"]
# About 10 s of training a cell on a quiet core (200 steps of 32 x 256 tokens; more when shared), so
# a test can act on cells while they train; every step is logged, so the log shows how far a cell got.
SLOW_STEPS = 200
SLOW = ["-m", "experiment=smoke", "width=32", f"steps={SLOW_STEPS}", "batch_size=32", "seq_len=256",
        "log_interval=1", "cluster=local"]


def sweep_command(args: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "sweep.py"), *args]


def start_sweep(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(sweep_command(args), cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def sweep_running(proc: subprocess.Popen, predicate) -> bool:
    """For wait_until: the predicate, but a sweep that ended early fails the test with its output."""
    if proc.poll() is not None:
        out, err = proc.communicate()
        raise AssertionError(f"the sweep ended (exit {proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
    return predicate()


def sweep(args: list[str], cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_command(args), cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def status(store: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeper", "status", "--store", str(store)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)


def jobs_from(workdir: Path, since: float) -> dict[str, str]:
    """Job id -> state of every job sacct knows that was submitted from ``workdir`` since then."""
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 5))
    out = subprocess.run(["sacct", "-a", "-X", "-n", "-P", "-o", "JobID,WorkDir,State", "-S", start],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in out.splitlines()]
    return {job_id: state for job_id, where, state in rows if Path(where) == workdir}


def jobs_once_known(workdir: Path, since: float, job_ids: set[str], wait_until) -> dict[str, str]:
    """``jobs_from`` once sacct knows every one of ``job_ids``: slurmdbd records a job a moment after it ends."""
    wait_until(lambda: job_ids <= set(jobs_from(workdir, since)), 30, f"sacct knowing the jobs {sorted(job_ids)}")
    return jobs_from(workdir, since)


def history(job_id: str) -> list[str]:
    """Every state the job went through, first to last (sacct -D keeps requeued runs)."""
    out = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job_id],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def job_log(store: Path, job_id: str, stream: str = "err") -> str:
    """The job's submitit log (all its runs: the files are appended to)."""
    paths = list(store.glob(f"logs/*/.submitit/{job_id}/{job_id}_0_log.{stream}"))
    return paths[0].read_text() if paths else ""


def steps_logged(store: Path, job_id: str) -> int:
    steps = re.findall(r"^step (\d+)/", job_log(store, job_id), re.M)
    return int(steps[-1]) if steps else 0


def trained_keys(stdout: str) -> set[str]:
    return {line.split()[1] for line in stdout.splitlines() if line.startswith("cell ")}


@pytest.mark.timeout(240)
def test_a_grid_runs_as_slurm_jobs_and_a_rerun_submits_nothing(slurm_cluster, tmp_path, wait_until):
    started = time.time()
    first = sweep([*GRID, "steps=4", "store=store"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    store = tmp_path / "store"
    frame = load_store(store)
    assert len(frame) == 4 and set(frame["status"]) == {"ok"} and (frame["steps_done"] == 4).all()

    entries = read_entries(store)
    jobs = jobs_once_known(tmp_path, started, {e["job_id"] for e in entries.values()}, wait_until)
    assert len(jobs) == 4, jobs  # one array task per cell
    # (a job whose cell is recorded may still be exiting when the sweep ends)
    wait_until(lambda: set(jobs_from(tmp_path, started).values()) == {"COMPLETED"}, 30,
               "sacct showing the 4 jobs COMPLETED")
    assert {e["job_id"] for e in entries.values()} == set(jobs) and set(entries) == set(frame["key"])
    for key in frame["key"]:  # each job wrote its own record, saying where it ran
        assert read_record(store, key)["runtime"]["slurm"]["job_id"] == entries[key]["job_id"]

    again = sweep([*GRID, "steps=4", "store=store"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipping 4 of 4 cells already in the store" in again.stdout
    assert "nothing to run" in again.stdout
    assert jobs_from(tmp_path, started).keys() == jobs.keys()  # sacct: no job submitted by the rerun


@pytest.mark.timeout(300)
def test_a_cancelled_cell_fails_alone_and_a_rerun_trains_only_it(slurm_cluster, tmp_path, wait_until):
    started = time.time()
    store = tmp_path / "store"
    args = [*SLOW, "lr=-10,-9,-8", f"store={store}"]
    proc = start_sweep(args, tmp_path)
    try:
        wait_until(lambda: sweep_running(proc, lambda: len(read_entries(store)) == 3), 60,
                   "the sweep noting its 3 queued jobs")
        entries = read_entries(store)

        # The same sweep again, as after losing the shell: no cell is submitted a second time.
        twice = sweep(args, tmp_path)
        assert twice.returncode == 0, twice.stderr[-3000:]
        assert "leaving 3 cells to the Slurm jobs already queued for them" in twice.stdout
        assert "nothing to run" in twice.stdout
        assert {k: e["job_id"] for k, e in read_entries(store).items()} == \
            {k: e["job_id"] for k, e in entries.items()}

        victim, job_id = next((key, e["job_id"]) for key, e in entries.items())
        wait_until(lambda: sweep_running(proc, lambda: steps_logged(store, job_id) >= 2), 90,
                   f"job {job_id} training")

        shown = status(store)  # the queue beside the store, while the cells run
        assert shown.returncode == 0, shown.stderr
        running = re.search(r"queue \(squeue\): (\d+) running, (\d+) pending", shown.stdout)
        assert running and int(running[1]) >= 1 and int(running[1]) + int(running[2]) == 3, shown.stdout
        assert " run" in shown.stdout

        subprocess.run(["scancel", job_id], check=True)
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "1 of 3 cells failed" in err and victim in err and "CANCELLED" in err, err[-3000:]
    frame = load_store(store).set_index("key")
    assert frame["status"].to_dict() == {k: "failed" if k == victim else "ok" for k in entries}
    error = read_record(store, victim)["error"]
    assert error["slurm_state"] == "CANCELLED" and error["job_id"] == job_id
    assert "CANCELLED" in error["log_tail"] and "step " in error["log_tail"]  # Slurm's line, the trainer's

    before = jobs_from(tmp_path, started)
    retry = sweep(args, tmp_path)
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert "skipping 2 of 3 cells already in the store" in retry.stdout
    new_jobs = set(jobs_from(tmp_path, started)) - set(before)
    assert new_jobs == {read_entries(store)[victim]["job_id"]}  # one new Slurm job: the failed cell's
    assert trained_keys(job_log(store, new_jobs.pop(), "out")) == {victim}
    assert set(load_store(store)["status"]) == {"ok"}


@pytest.mark.timeout(240)
def test_a_cell_that_raises_ends_its_job_failed_with_the_jobs_own_record(slurm_cluster, tmp_path,
                                                                         wait_until):
    started = time.time()
    store = tmp_path / "store"
    # The trainer raises in the job, not the sweep before it launches: a CUDA device asked of a node
    # without one (the launch host cannot know what a node has, so pre-flight leaves it to the job).
    first = sweep(["-m", "experiment=smoke", "width=32", "lr=-9", "steps=4", "device=cuda", "precision=fp32",
                   "cluster=local", f"store={store}"], tmp_path)
    assert first.returncode != 0
    assert "1 of 1 cells failed" in first.stderr and "CUDA is not available" in first.stderr, first.stderr[-3000:]
    [(key, entry)] = read_entries(store).items()
    job_id = entry["job_id"]
    wait_until(lambda: jobs_from(tmp_path, started).get(job_id) == "FAILED", 30,
               f"sacct showing job {job_id} FAILED")
    record = read_record(store, key)  # written by the job itself, with the cell's traceback
    assert record["status"] == "failed" and record["runtime"]["slurm"]["job_id"] == job_id
    error = record["error"]
    assert (error["type"], error["slurm_state"], error["job_id"]) == ("ValueError", "FAILED", job_id)
    assert "Traceback" in error["log_tail"] and "CUDA is not available" in error["log_tail"]


@pytest.mark.timeout(300)
def test_preempted_cells_resume_from_their_checkpoints(slurm_cluster, tmp_path, wait_until):
    """Two ways Slurm preempts: `scontrol requeue` (SIGTERM, then Slurm requeues the job) and
    SIGUSR2 (submitit's path: checkpoint the launcher's call, requeue itself)."""
    store = tmp_path / "store"
    proc = start_sweep([*SLOW, "lr=-9,-8", f"store={store}"], tmp_path)
    try:
        wait_until(lambda: sweep_running(proc, lambda: len(read_entries(store)) == 2), 60,
                   "the sweep noting its 2 queued jobs")
        jobs = {key: e["job_id"] for key, e in read_entries(store).items()}
        wait_until(lambda: sweep_running(proc, lambda: all(steps_logged(store, j) >= 3
                                                            for j in jobs.values())), 90,
                   f"jobs {sorted(jobs.values())} training")
        by_requeue, by_usr2 = sorted(jobs.values())
        subprocess.run(["scontrol", "requeue", by_requeue], check=True)
        subprocess.run(["scancel", "--signal=USR2", by_usr2], check=True)
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "2/2 cells finished: 2 ok" in out

    for key, job_id in jobs.items():
        log = job_log(store, job_id)
        saved = re.findall(r"checkpoint saved at step (\d+)", log)
        resumed = re.findall(r"resuming from .*checkpoint\.pt at step (\d+)", log)
        assert len(saved) == 1 and resumed == saved and int(saved[0]) > 0, log[-2000:]
        wait_until(lambda: history(job_id) == ["REQUEUED", "COMPLETED"], 30,
                   f"sacct showing job {job_id} requeued once, then completed")
        assert trained_keys(job_log(store, job_id, "out")) == {key}  # recorded once, at the end
        record = read_record(store, key)
        assert record["status"] == "ok" and record["metrics"]["steps_done"] == SLOW_STEPS
        assert [step for step, _ in record["curves"]["train"]] == list(range(1, SLOW_STEPS + 1))  # no step lost or redone


@pytest.mark.timeout(300)
def test_a_transfer_search_runs_rounds_as_job_arrays_waits_for_a_killed_searchs_jobs_and_reruns_nothing(
        slurm_cluster, tmp_path, wait_until):
    started = time.time()
    store = tmp_path / "store"
    search = ["-m", "experiment=smoke", "width=32,64", "lr=-10:-7", "steps=4", "search=transfer",
              "search_budget=1", "cluster=local", f"store={store}"]
    # The first round goes to Slurm held and the search is killed: a lost shell, its jobs still queued.
    killed = start_sweep([*search, "+hydra.launcher.additional_parameters.hold=true"], tmp_path)
    try:
        wait_until(lambda: sweep_running(killed, lambda: len(read_entries(store)) == 3), 60,
                   "the search queueing its first round of 3 cells")
    finally:
        killed.kill()
        killed.communicate()
    [held] = {e["job_id"].split("_")[0] for e in read_entries(store).values()}

    log = tmp_path / "resumed.log"
    with open(log, "w") as out:
        resumed = subprocess.Popen(sweep_command(search), cwd=tmp_path, env=ENV, stdout=out,
                                   stderr=subprocess.STDOUT, text=True)

    def resumed_waiting() -> bool:
        if resumed.poll() is not None:
            raise AssertionError(f"the rerun ended (exit {resumed.returncode}):\n{log.read_text()[-3000:]}")
        return "waiting for 3 cell(s)" in log.read_text()
    try:
        wait_until(resumed_waiting, 60, "the rerun waiting for the queued round, not submitting it again")
        subprocess.run(["scontrol", "release", held], check=True)
        assert resumed.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        resumed.kill()
        subprocess.run(["scancel", held], capture_output=True)  # no held job outlives a failed test
    text = log.read_text()
    assert "leaving 3 cells to the Slurm jobs already queued for them" in text

    frame = load_store(store)
    lrs = np.arange(-10.0, -6.0)
    for width in (32, 64):
        row = frame[frame["width"] == width].set_index("lr")
        diverged = (row["status"] == "diverged").reindex(lrs, fill_value=False).to_numpy()
        loss = row["val_loss"].reindex(lrs).to_numpy(float)
        assert row_optimum(width, lrs, loss, diverged).edge is None, f"width {width} not bracketed"
        assert f"{width}: bracketed by {len(row)}" in text
    assert len(frame) < 8  # sparse: not the whole 2 x 4 grid
    [analysed] = analyse(frame)  # the report's optima: inside each row's cells
    assert [(o.size, o.edge) for o in analysed.optima] == [(32, None), (64, None)]

    entries = read_entries(store)
    jobs = jobs_once_known(tmp_path, started, {e["job_id"] for e in entries.values()}, wait_until)
    assert len(jobs) == len(frame) and {e["job_id"] for e in entries.values()} == set(jobs)  # a job per cell
    for key in frame["key"]:  # each recorded by its own job, the held round's by the killed search's jobs
        assert read_record(store, key)["runtime"]["slurm"]["job_id"] == entries[key]["job_id"]
    assert len({job.split("_")[0] for job in jobs}) == text.count("[search] round ")  # an array a round

    again = sweep(search, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[search] round" not in again.stdout and "bracketed by" in again.stdout
    assert jobs_from(tmp_path, started).keys() == jobs.keys()  # sacct: the rerun submitted no job


def test_status_without_slurm_shows_the_store_and_no_queue(tmp_path):
    store = tmp_path / "store"
    config = {"width": 32, "depth": 2, "lr": -9}
    record = make_record(config, "ok", experiment="smoke", metrics={"val_loss": 3.0})
    write_record(store, record)
    write_entry(store, record["key"], job_id="123_0", experiment="smoke", config=config,
                written_by="sweep")
    assert (run_dir(store, record["key"]) / ENTRY).exists()
    no_slurm = {**ENV, "PATH": str(Path(sys.executable).parent)}  # no squeue on this PATH
    shown = subprocess.run([sys.executable, "-m", "sweeper", "status", "--store", str(store)],
                           cwd=ROOT, env=no_slurm, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    assert "1 ok" in shown.stdout and "done" in shown.stdout and "queue" not in shown.stdout
