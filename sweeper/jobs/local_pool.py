"""Local cells side by side: ``jobs`` worker processes that each import torch once and then take
cell after cell, for the sweep's basic launcher (``jobs=auto``: the cores this process may use ÷
the threads of one cell; for cells on CUDA, the visible GPUs ÷ the GPUs of one cell, each worker
seeing only its own GPUs, since a cell's micro batch is planned for whole GPUs).

A worker runs a cell as Hydra's basic launcher does (the cell's config composed again from the
files, so the planned_cell check holds, then Hydra's run_job and the app's task), and nothing
else: a worker takes its next cell only when the sweep hands it one, so a stopped sweep leaves no
queue behind. The guarantees of a sequential sweep hold as they are: each cell is claimed in the
store by the worker training it (its claim, Store.claim), and its record is written there by that worker.

Stopping: Ctrl-C reaches the sweep (workers ignore SIGINT), which sends each worker SIGTERM, the
trainer's stop signal: the cell checkpoints at its next step, leaves no record and releases its
claim, so a rerun resumes it. A sweep killed with ``kill -9`` is noticed by its workers (the
parent's sentinel), which stop the same way (between a cell's claim and its training, or its
training and its record, SIGTERM unwinds the cell: no record, claim released); killed together
with the sweep (its process group) they leave only dead claims, which the rerun takes over.
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Optional

from .job import JobLostError, NotLaunched
from sweeper.store import RecordWriteError

STOP_WAIT_S = 60.0  # for a stopped worker to checkpoint its cell before it is killed


def usable_cores() -> int:
    """The cores this process may run on (its affinity: taskset, a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def visible_gpus(device: str) -> list[str]:
    """The CUDA devices cells with this ``device`` setting train on (none for CPU cells), named as
    CUDA_VISIBLE_DEVICES names them. torch counts them without a CUDA context (workers are spawned)."""
    if str(device) == "cpu":
        return []
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [d.strip() for d in listed.split(",")][:count] if listed else [str(i) for i in range(count)]


def resolve_jobs(jobs: str, threads: int, cores: Optional[int] = None, gpus: int = 0,
                 gpus_per_cell: int = 1) -> int:
    """``jobs`` as given on the command line ("auto" or a count) -> the number of cells at once.
    auto: cores ÷ threads per cell (threads=0 is torch's default, every core: one cell at a time);
    with ``gpus`` visible to CUDA cells, gpus ÷ gpus_per_cell instead (at least one)."""
    cores = cores or usable_cores()
    text = str(jobs).strip()
    if text == "auto":
        if gpus:
            return max(1, gpus // gpus_per_cell)
        return max(1, cores // threads) if threads > 0 else 1
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        auto = f"{gpus} GPUs ÷ gpus_per_cell" if gpus else f"{cores} cores ÷ threads per cell"
        raise ValueError(f"jobs={jobs}: give a number of cells to run at once (1, 2, ...) or jobs=auto "
                         f"(here {auto})")
    return count


def gpu_slots(gpus: list[str], gpus_per_cell: int, jobs: int) -> list[Optional[str]]:
    """Each worker's CUDA_VISIBLE_DEVICES: its own gpus_per_cell GPUs, dealt round robin when more
    workers than that were asked for (jobs=N); None for every worker when no GPU is visible."""
    if not gpus:
        return [None] * jobs
    groups = [gpus[i:i + gpus_per_cell] for i in range(0, len(gpus) - gpus_per_cell + 1, gpus_per_cell)]
    groups = groups or [gpus]
    return [",".join(groups[i % len(groups)]) for i in range(jobs)]


def _portable(err: BaseException) -> BaseException:
    """The exception itself when it pickles (to cross back to the sweep), else its text."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def _stop_when_orphaned() -> None:
    """In a worker: once the sweep's process is gone (kill -9), stop as on SIGTERM."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os.kill(os.getpid(), signal.SIGTERM)


def _run_cell(context: tuple, idx: int, overrides: list[str]) -> Optional[BaseException]:
    """One job as hydra's BasicLauncher runs it; None when it finished, else its exception."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobStatus, run_job
    from omegaconf import open_dict

    hydra_context, config, task_function = context
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = idx
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    ret = run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    return ret.return_value if ret.status == JobStatus.FAILED else None


def _unwind(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def _worker(conn: Connection, payload: bytes, threads: Optional[int], gpus: Optional[str]) -> None:
    """A worker's life: set up Hydra once, then run each cell the sweep sends until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweep's to handle
    # SIGTERM outside a cell's training loop (which checkpoints on it) unwinds instead of killing:
    # a cell claimed but not yet training, or trained but not yet recorded, releases its claim.
    signal.signal(signal.SIGTERM, _unwind)
    if gpus is not None:  # before torch is imported: its cells see only this worker's GPUs
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    if threads:  # torch's default thread count, for cells that leave threads=0
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    threading.Thread(target=_stop_when_orphaned, daemon=True, name="orphan-watch").start()
    import cloudpickle
    from hydra.core.singleton import Singleton
    from hydra.core.utils import setup_globals

    setup_globals()
    hydra_context, config, task_function, singletons = cloudpickle.loads(payload)
    Singleton.set_state(singletons)
    context = (hydra_context, config, task_function)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError, SystemExit):  # the sweep is gone, or stopped us between cells
            return
        if task is None:
            return
        idx, overrides = task
        try:
            outcome = _run_cell(context, idx, overrides)
        except SystemExit:  # stopped (SIGTERM) mid-cell: it checkpointed; no more cells
            return
        except Exception as err:  # composing the cell failed: the sweep records it
            outcome = err
        conn.send(None if outcome is None else _portable(outcome))


@dataclass
class _Worker:
    process: Any  # multiprocessing's SpawnProcess
    conn: Connection
    slot: int  # which of the pool's places (and GPUs) it holds
    task: Optional[int] = None  # index in the batch of the cell it trains


class LocalPool:
    """``jobs`` workers for the sweep's cells, started at the first batch and kept for the next
    (a transfer search's rounds); ``close`` ends them."""

    def __init__(self, jobs: int, hydra_context, config, task_function,
                 gpus: Optional[list[Optional[str]]] = None) -> None:
        import cloudpickle
        from hydra.core.singleton import Singleton

        self.jobs = jobs
        self.gpus = gpus or [None] * jobs  # each slot's CUDA_VISIBLE_DEVICES (gpu_slots)
        self.payload = cloudpickle.dumps((hydra_context, config, task_function, Singleton.get_state()))
        self.threads = max(1, usable_cores() // jobs)
        self.workers: list[_Worker] = []
        self.context = multiprocessing.get_context("spawn")  # no fork of a threaded process

    def _start(self) -> _Worker:
        slot = min(set(range(self.jobs)) - {w.slot for w in self.workers})  # a dead worker's place
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=_worker, args=(theirs, self.payload, self.threads, self.gpus[slot]),
                                       name=f"sweep-worker-{slot}", daemon=True)
        process.start()
        theirs.close()
        worker = _Worker(process, ours, slot)
        self.workers.append(worker)
        return worker

    def launch(self, batch: list[list[str]], first_idx: int) -> list[Optional[BaseException]]:
        """Runs the batch's jobs, ``jobs`` at a time, in order; each job's outcome (None: done)."""
        outcomes: dict[int, Optional[BaseException]] = {}
        todo = deque(range(len(batch)))
        self.workers = [w for w in self.workers if w.process.is_alive()]
        try:
            while len(outcomes) < len(batch):
                if any(isinstance(o, RecordWriteError) for o in outcomes.values()):
                    while todo:  # the store cannot record: the rest would train for nothing
                        outcomes[todo.popleft()] = NotLaunched("the store cannot record results")
                    if len(outcomes) == len(batch):
                        break
                idle = [w for w in self.workers if w.task is None]
                while todo and (idle or len(self.workers) < self.jobs):
                    worker = idle.pop() if idle else self._start()
                    worker.task = todo.popleft()
                    worker.conn.send((first_idx + worker.task, batch[worker.task]))
                busy = [w for w in self.workers if w.task is not None]
                ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
                for worker in busy:
                    if worker.conn not in ready and worker.process.sentinel not in ready:
                        continue
                    try:
                        outcomes[worker.task] = worker.conn.recv()
                        worker.task = None
                        continue
                    except (EOFError, OSError):  # it died (OOM, kill) mid-cell: the cell is lost
                        worker.process.join(STOP_WAIT_S)
                        outcomes[worker.task] = JobLostError(
                            f"the sweep's worker process (pid {worker.process.pid}) ended with exit "
                            f"code {worker.process.exitcode} before its cell was recorded")
                        self.workers.remove(worker)
        except BaseException:  # Ctrl-C, or the sweep failing: the cells in training checkpoint
            self.close(stop=True)
            raise
        return [outcomes[i] for i in range(len(batch))]

    def close(self, stop: bool = False) -> None:
        """Ends the workers: idle ones at once; with ``stop``, busy ones via SIGTERM (their cells
        checkpoint and keep no record), killed if they take longer than STOP_WAIT_S."""
        for worker in self.workers:
            if worker.task is not None and stop and worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGTERM)
            else:
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        for worker in self.workers:
            worker.process.join(STOP_WAIT_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self.workers = []
