"""Which cells sit in the Slurm queue: a job entry per cell in the store, and squeue's answer.

A cell sent to Slurm gets ``STORE/runs/<key>/slurm.json`` ({"job_id", "experiment", "config",
"written_by", "written_at"}). The sweep writes it right after sbatch, so pending cells are known;
the job rewrites it when it starts, so a cell is known even if the sweep died in between. A job id
is submitit's: ``123_4`` for task 4 of array job 123, ``123`` for a single job.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from trainer.atomic import atomic_write_bytes

from .schema import now_iso, result_config
from .records import RUNS, run_dir

ENTRY = "slurm.json"
# squeue states of a job whose cell is computing; every other state in the queue is waiting
# (PENDING, REQUEUED, REQUEUE_HOLD, SUSPENDED, ...).
RUNNING_STATES = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING"})


class QueueError(RuntimeError):
    """squeue is installed but gave no answer (controller down or slow, bad config)."""


def write_entry(store: Path, key: str, *, job_id: str, experiment: Optional[str], config: dict,
                written_by: str) -> None:
    entry = {"job_id": job_id, "experiment": experiment, "config": result_config(config),
             "written_by": written_by, "written_at": now_iso()}
    atomic_write_bytes(run_dir(store, key) / ENTRY, json.dumps(entry, indent=1).encode())


def read_entries(store: Path) -> dict[str, dict]:
    """Cell key -> its latest job entry; unreadable entries (a torn copy) are skipped."""
    entries = {}
    for path in sorted((Path(store) / RUNS).glob(f"*/{ENTRY}")):
        try:
            entries[path.parent.name] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return entries


def squeue_available() -> bool:
    return shutil.which("squeue") is not None


def squeue_states(job_ids: set[str]) -> dict[str, str]:
    """Job id -> its squeue state, for the given jobs still in the queue (array tasks one by one)."""
    if not job_ids:
        return {}
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)],
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise QueueError("squeue did not answer within 60 s") from None
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:  # squeue's answer when a single asked job has left
            return {}
        raise QueueError(f"squeue failed (exit {proc.returncode}): {proc.stderr.strip()}")
    states = dict(line.split("|", 1) for line in proc.stdout.split())
    return {job_id: state for job_id, state in states.items() if job_id in job_ids}


def queued_cells(store: Path) -> list[dict]:
    """The store's cells whose Slurm job is pending or running: their entries, each with "state"
    ("pending" | "running") and "slurm_state" added."""
    entries = read_entries(store)
    states = squeue_states({e["job_id"] for e in entries.values()})
    return [{**entry, "key": key, "slurm_state": states[entry["job_id"]],
             "state": "running" if states[entry["job_id"]] in RUNNING_STATES else "pending"}
            for key, entry in entries.items() if entry["job_id"] in states]
