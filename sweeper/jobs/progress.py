"""Progress lines of a running sweep: cells done / total, failures, elapsed, estimated remaining.

The time left weights each cell by its training compute (tokens x non-embedding parameters,
trainer.cost.cell_relative_compute): in a width sweep one width-256 cell costs as much as sixty-four of width
32, so counting cells would promise minutes where the big cells take most of the time. Each cell also
pays a fixed start (a process, imports, data) that compute does not see, which dominates small cells:
the elapsed time so far is fitted as a * cells + b * compute (non-negative least squares over the
progress so far), and the time left is a * cells left + b * compute left.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Mapping, TextIO

import numpy as np


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """``costs``: each cell's key and its compute (any unit); the time left is the elapsed time per
    unit of compute done so far times the compute still to do."""

    def __init__(self, costs: Mapping[str, float], out: TextIO, now: Callable[[], float] = time.monotonic) -> None:
        self.costs = dict(costs)
        self.out = out
        self.now = now
        self.started = now()
        self.counts: Counter[str] = Counter()
        self.cost_done = 0.0
        self.history: list[tuple[int, float, float]] = []  # (cells done, compute done, elapsed)

    @property
    def total(self) -> int:
        return len(self.costs)

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def add(self, key: str, status: str) -> None:
        """Counts a finished cell and prints one line."""
        self.counts[status] += 1
        self.cost_done += self.costs[key]
        elapsed = self.now() - self.started
        left = self.total - self.done
        self.history.append((self.done, self.cost_done, elapsed))
        eta = f"~{clock(self.time_left())} left" if left else "done"
        shown = ("ok", "diverged", "failed", *sorted(set(self.counts) - {"ok", "diverged", "failed"}))
        by_status = ", ".join(f"{self.counts[s]} {s}" for s in shown)
        print(f"[sweep] {self.done}/{self.total} cells finished: {by_status} | "
              f"elapsed {clock(elapsed)} | {eta}", file=self.out, flush=True)

    def time_left(self) -> float:
        from scipy.optimize import nnls  # slow to import: only once a cell has finished

        cells, cost, elapsed = (np.array(column, dtype=float) for column in zip(*self.history))
        scale = max(cost[-1], 1e-300)  # compute in units of what is done: a well-conditioned fit
        (per_cell, per_cost), _ = nnls(np.stack([cells, cost / scale], axis=1), elapsed)
        cost_left = (sum(self.costs.values()) - self.cost_done) / scale
        return per_cell * (self.total - self.done) + per_cost * cost_left
