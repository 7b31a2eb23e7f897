"""Progress while a batch runs: a thread that reports each cell as an attempt of it lands in the store.

Launchers block until a whole batch is done (a Slurm array can be the whole grid); the store is
where finished cells show first, so watching it gives a live progress line for any launcher. What
is watched is the cell's attempts, not its result: a rerun that fails lands as failed even where the
cell keeps its earlier result. An attempt lands only once the cell's record reads back with it: a
record that could not be written leaves the cell to the batch's settling (sweeper.jobs.driver).
"""
from __future__ import annotations

import threading
from typing import Callable

from sweeper.grid.cells import PlannedCell
from sweeper.store import Store


class StoreWatcher:
    """Calls ``on_record(cell, attempt)`` once for each cell that gets a new, recorded attempt while
    the watcher runs; use as a context manager around the launch. ``before[key]``: the cell's attempt
    files when the watcher started, so a batch can be settled against them afterwards."""

    def __init__(self, cells: list[PlannedCell], store: Store,
                 on_record: Callable[[PlannedCell, dict], None], interval_s: float = 2.0) -> None:
        self.store = store
        self.on_record = on_record
        self.interval_s = interval_s
        self.before = {c.key: store.attempt_names(c.key) for c in cells}
        self.pending = {c.key: c for c in cells}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-watcher", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        for key, cell in list(self.pending.items()):
            attempt = self.store.recorded_attempt(key, self.before[key])
            if attempt is None:
                continue
            del self.pending[key]
            self.on_record(cell, attempt)

    def __enter__(self) -> "StoreWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # attempts written since the last poll land before the batch is settled
