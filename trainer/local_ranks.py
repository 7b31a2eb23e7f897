"""The ranks of one cell as processes on this machine: ``launch(cfg)`` for gpus_per_cell = N > 1
without a cluster (on a CPU, N processes on gloo; trainer.distributed has the step).

Each rank is a fresh interpreter (``python -m trainer.rank_process``, a subprocess: a sweep's worker
processes are daemons, which multiprocessing forbids children) that calls ``trainer.train.run`` as
its rank, rank 0 listening on a free local port. Rank 0 keeps the cell's own output (its step lines); every other rank writes to
``rank<r>.log`` under the run dir's ``ranks/`` (a temporary folder without a run dir). A rank that
exits with an error, or is killed, ends the others at once and fails the cell with a message that
names it and its log's tail: never a hang (a rank blocked in a collective is terminated; the
collectives' own timeout covers the rest). A stop signal (SIGTERM/SIGUSR2) is passed to every
rank, which stop at the same step after rank 0's checkpoint; then this process hands the signal
on, as one process would.
"""
from __future__ import annotations

import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .callbacks import Callback
from .config import TrainConfig, device_type
from .distributed import world_size
from .logs import log_tail
from .stop_request import StopRequest

POLL_S = 0.2
GRACE_S = 10.0  # how long ranks that outlived a failed one get to end before they are killed
RESULT_FILE = "rank0.result"
ERROR_FILE = "rank0.error"  # rank 0's traceback: its output is the cell's own
CELL_FILE = "cell.pickle"  # the config and rank 0's callbacks, for the ranks to read


class RankFailed(RuntimeError):
    """A rank of the cell ended with an error or was killed: the message names it."""


def free_port() -> int:
    """A TCP port nobody listens on now, for rank 0's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def _start(folder: Path, rank: int, port: int) -> subprocess.Popen:
    """Rank ``rank``'s process; its output to ``rank<r>.log`` except rank 0's."""
    root = str(Path(__file__).resolve().parent.parent)  # this checkout, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    log = None if rank == 0 else open(folder / f"rank{rank}.log", "wb")
    try:
        return subprocess.Popen([sys.executable, "-m", "trainer.rank_process", str(folder), str(rank), str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT if log else None)
    finally:
        if log is not None:
            log.close()


def launch(cfg: TrainConfig, callbacks: Sequence[Callback] = ()):
    """Runs the cell on world_size(cfg) local processes; returns rank 0's Result."""
    if cfg.nodes_per_cell > 1:
        raise ValueError(f"nodes_per_cell={cfg.nodes_per_cell} needs a cluster (cluster=...) or torchrun on "
                         f"each node: this machine runs gpus_per_cell ranks of one node")
    n = world_size(cfg)
    if device_type(cfg.device) == "cuda" and torch.cuda.device_count() < n:
        raise ValueError(f"gpus_per_cell={n} ranks, one per GPU, but this machine has {torch.cuda.device_count()} "
                         f"GPU(s): lower gpus_per_cell, or run on a cluster (cluster=...)")
    if cfg.run_dir:
        folder = Path(cfg.run_dir) / "ranks"
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="mutransfer-ranks-"))
    for stale in (RESULT_FILE, ERROR_FILE):
        (folder / stale).unlink(missing_ok=True)
    try:
        (folder / CELL_FILE).write_bytes(pickle.dumps((cfg, tuple(callbacks))))
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        raise ValueError(f"a cell of {n} local ranks passes its callbacks to rank 0's process, but they "
                         f"cannot be pickled ({err}): give callbacks defined at a module's top level") from None
    port = free_port()
    with StopRequest() as stop:
        processes = []
        try:
            processes = [_start(folder, r, port) for r in range(n)]
            failed = _wait(processes, stop)
        finally:  # an error here (KeyboardInterrupt) leaves no rank behind
            _end(processes)
        if failed is not None:
            raise RankFailed(_failure(failed, processes[failed].returncode, folder, n))
        if stop.signum is not None:
            stop.hand_over()
    result = pickle.loads((folder / RESULT_FILE).read_bytes())
    if cfg.run_dir:
        for done in (RESULT_FILE, CELL_FILE):
            (folder / done).unlink()
    else:  # a failed cell keeps its ranks' logs; a finished one without a run dir keeps nothing
        shutil.rmtree(folder, ignore_errors=True)
    return result


def _wait(processes: list, stop) -> Optional[int]:
    """Waits until every rank has ended; returns the first rank that ended badly (None: all well).
    A stop signal received meanwhile is passed on to every rank once."""
    passed_on = False
    while True:
        if stop.signum is not None and not passed_on:
            for p in processes:
                if p.poll() is None:
                    p.send_signal(stop.signum)
            passed_on = True
        codes = [p.poll() for p in processes]
        # a stopped rank exits 128 + its signal (SIGTERM where the group stopped it: trainer.stop_request)
        stopped = (128 + stop.signum, 128 + signal.SIGTERM) if stop.signum is not None else ()
        bad = [r for r, c in enumerate(codes) if c not in (None, 0, *stopped)]
        if bad:
            return bad[0]
        if all(c is not None for c in codes):
            return None
        time.sleep(POLL_S)


def _end(processes: list) -> None:
    """Ends the ranks still running: terminate, then kill what outlives GRACE_S."""
    for p in processes:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + GRACE_S
    for p in processes:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _failure(rank: int, code: int, folder: Path, n: int) -> str:
    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    if rank == 0:
        tail = log_tail(folder / ERROR_FILE) or "(rank 0's output is the cell's own log, above)"
        where = ""
    else:
        tail = log_tail(folder / f"rank{rank}.log")
        where = f" (log: {folder / f'rank{rank}.log'})"
    return f"rank {rank} of {n} {how}{where}; the cell's other ranks were stopped. Its last lines:\n{tail}"

