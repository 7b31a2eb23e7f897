"""One rank of a cell that trainer.local_ranks starts on this machine: ``python -m trainer.rank_process
FOLDER RANK PORT`` runs the cell's loop (trainer.train.run) as that rank. Kept apart from the
launcher so that the loop may start ranks without the launcher importing the loop back."""
from __future__ import annotations

import os
import pickle
import sys
import traceback
from pathlib import Path

from .distributed import Ranks, world_size
from .local_ranks import CELL_FILE, ERROR_FILE, RESULT_FILE
from .train import run


def main(folder: Path, rank: int, port: int) -> int:
    """The cell's loop as rank ``rank``; an error's traceback to its output (rank 0's also to a file
    the launcher reads). Returns the exit status."""
    cfg, callbacks = pickle.loads((folder / CELL_FILE).read_bytes())
    ranks = Ranks(rank, world_size(cfg), rank, "127.0.0.1", port)
    try:
        result = run(cfg, callbacks if rank == 0 else (), ranks)
    except SystemExit as stopped:  # a stop signal: the group checkpointed and stopped together
        return stopped.code if isinstance(stopped.code, int) else 1
    except Exception:
        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        if rank == 0:
            (folder / ERROR_FILE).write_text(text)
        return 1
    if rank == 0:
        (folder / RESULT_FILE).write_bytes(pickle.dumps(result))
    return 0


if __name__ == "__main__":
    status = main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything the rank owes is written: skip the interpreter's teardown, where gloo's threads can
    # still hold tensors whose release aborts the process (SIGABRT, "terminate called without an
    # active exception"), failing a cell that finished.
    os._exit(status)
