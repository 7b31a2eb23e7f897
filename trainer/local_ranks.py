"""The ranks of one cell as processes on this machine: ``launch(cfg)`` for gpus_per_cell = N > 1
without a cluster (on a CPU, N processes on gloo; trainer.distributed has the step).

Each rank is a fresh (spawned) interpreter that calls ``trainer.train.run`` as its rank, rank 0 on
a free local port. Rank 0 keeps the cell's own output (its step lines); every other rank writes to
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
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional, Sequence

import torch.multiprocessing as mp

from .callbacks import Callback
from .config import TrainConfig
from .distributed import Ranks, world_size

TAIL_LINES = 25
POLL_S = 0.2
GRACE_S = 10.0  # how long ranks that outlived a failed one get to end before they are killed
RESULT_FILE = "rank0.result"


class RankFailed(RuntimeError):
    """A rank of the cell ended with an error or was killed: the message names it."""


def free_port() -> int:
    """A TCP port nobody listens on now, for rank 0's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _rank_main(rank: int, cfg: TrainConfig, port: int, folder: str, callbacks: Sequence[Callback]) -> None:
    """One rank's process: its output to its log (rank 0 keeps the cell's), then the cell's loop."""
    folder = Path(folder)
    log = folder / f"rank{rank}.log"
    if rank:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    print(f"rank {rank} of {world_size(cfg)}: pid {os.getpid()}", file=sys.stderr, flush=True)
    from .train import run

    ranks = Ranks(rank, world_size(cfg), rank, "127.0.0.1", port)
    try:
        result = run(cfg, callbacks if rank == 0 else (), ranks)
    except Exception:  # the traceback into the rank's log (rank 0's also to a file the launcher reads)
        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        if rank == 0:
            (folder / "rank0.error").write_text(text)
        sys.exit(1)
    if rank == 0:
        (folder / RESULT_FILE).write_bytes(pickle.dumps(result))


def launch(cfg: TrainConfig, callbacks: Sequence[Callback] = ()):
    """Runs the cell on world_size(cfg) local processes; returns rank 0's Result."""
    from .train import StopRequest

    if cfg.nodes_per_cell > 1:
        raise ValueError(f"nodes_per_cell={cfg.nodes_per_cell} needs a cluster (cluster=...) or torchrun on "
                         f"each node: this machine runs gpus_per_cell ranks of one node")
    n = world_size(cfg)
    if cfg.run_dir:
        folder = Path(cfg.run_dir) / "ranks"
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="mutransfer-ranks-"))
    for stale in (RESULT_FILE, "rank0.error"):
        (folder / stale).unlink(missing_ok=True)
    context = mp.get_context("spawn")
    port = free_port()
    processes = [context.Process(target=_rank_main, args=(r, cfg, port, str(folder), callbacks), daemon=False)
                 for r in range(n)]
    with StopRequest() as stop:
        for p in processes:
            p.start()
        failed = _wait(processes, stop)
        if failed is not None:
            _end(processes)
            raise RankFailed(_failure(failed, processes[failed].exitcode, folder, n))
        if stop.signum is not None:
            stop.hand_over()
    result = pickle.loads((folder / RESULT_FILE).read_bytes())
    (folder / RESULT_FILE).unlink()
    return result


def _wait(processes: list, stop) -> Optional[int]:
    """Waits until every rank has ended; returns the first rank that ended badly (None: all well).
    A stop signal received meanwhile is passed on to every rank once."""
    passed_on = False
    while True:
        if stop.signum is not None and not passed_on:
            for p in processes:
                if p.exitcode is None:
                    os.kill(p.pid, stop.signum)
            passed_on = True
        codes = [p.exitcode for p in processes]
        # a stopped rank exits 128 + its signal (SIGTERM where the group stopped it: train.StopRequest)
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
        if p.exitcode is None:
            p.terminate()
    deadline = time.monotonic() + GRACE_S
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.exitcode is None:
            p.kill()
            p.join()


def _failure(rank: int, code: int, folder: Path, n: int) -> str:
    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    if rank == 0:
        tail = log_tail(folder / "rank0.error") or "(rank 0's output is the cell's own log, above)"
        where = ""
    else:
        tail = log_tail(folder / f"rank{rank}.log")
        where = f" (log: {folder / f'rank{rank}.log'})"
    return f"rank {rank} of {n} {how}{where}; the cell's other ranks were stopped. Its last lines:\n{tail}"
