"""Progress lines of a running sweep: cells done / total, failures, elapsed, estimated remaining."""
from __future__ import annotations

import time
from collections import Counter
from typing import Callable, TextIO


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total: int, out: TextIO, now: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.out = out
        self.now = now
        self.started = now()
        self.counts: Counter[str] = Counter()

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def add(self, status: str) -> None:
        """Counts a finished cell and prints one line."""
        self.counts[status] += 1
        elapsed = self.now() - self.started
        left = self.total - self.done
        eta = f"~{clock(elapsed / self.done * left)} left" if self.done and left else "done"
        shown = ("ok", "diverged", "failed", *sorted(set(self.counts) - {"ok", "diverged", "failed"}))
        by_status = ", ".join(f"{self.counts[s]} {s}" for s in shown)
        print(f"[sweep] {self.done}/{self.total} cells finished: {by_status} | "
              f"elapsed {clock(elapsed)} | {eta}", file=self.out, flush=True)
