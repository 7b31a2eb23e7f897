"""Progress while a batch runs: a thread that reports each cell as its record lands in the store.

Launchers block until a whole batch is done (a Slurm array can be the whole grid); the store is
where finished cells show first, so watching it gives a live progress line for any launcher.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Optional

from .plan import PlannedCell
from .result_store import StoreError, read_record, record_path

Stamp = Optional[tuple[int, int]]


def _stamp(path: Path) -> Stamp:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_ino  # a record is replaced by rename: a new inode


class StoreWatcher:
    """Calls ``on_record(cell, record)`` once for each cell whose record is (re)written while the
    watcher runs; use as a context manager around the launch."""

    def __init__(self, cells: list[PlannedCell], store: Path,
                 on_record: Callable[[PlannedCell, dict], None], interval_s: float = 2.0) -> None:
        self.store = store
        self.on_record = on_record
        self.interval_s = interval_s
        self.pending = {c.key: (c, _stamp(record_path(store, c.key))) for c in cells}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-watcher", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        for key, (cell, before) in list(self.pending.items()):
            if _stamp(record_path(self.store, key)) == before:
                continue
            try:
                record = read_record(self.store, key)
            except (StoreError, ValueError):  # gone again, or unreadable: settled after the launch
                continue
            del self.pending[key]
            self.on_record(cell, record)

    def __enter__(self) -> "StoreWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # records written since the last poll land before the batch is settled
