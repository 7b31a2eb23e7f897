"""One rank of a cell that trainer.local_ranks starts on this machine: ``python -m trainer.rank_process
FOLDER RANK PORT`` runs the cell's loop (trainer.train.run) as that rank. Kept apart from the
launcher so that the loop may start ranks without the launcher importing the loop back."""
from __future__ import annotations

import pickle
import sys
import traceback
from pathlib import Path

from .distributed import Ranks, world_size
from .local_ranks import CELL_FILE, ERROR_FILE, RESULT_FILE
from .train import run


def main(folder: Path, rank: int, port: int) -> None:
    """The cell's loop as rank ``rank``; an error's traceback to its output (rank 0's also to a file
    the launcher reads)."""
    cfg, callbacks = pickle.loads((folder / CELL_FILE).read_bytes())
    ranks = Ranks(rank, world_size(cfg), rank, "127.0.0.1", port)
    try:
        result = run(cfg, callbacks if rank == 0 else (), ranks)
    except Exception:
        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        if rank == 0:
            (folder / ERROR_FILE).write_text(text)
        sys.exit(1)
    if rank == 0:
        (folder / RESULT_FILE).write_bytes(pickle.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
