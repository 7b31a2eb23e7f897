"""A stop signal (SIGTERM, or SIGUSR2: submitit's requeue) taken between steps, never mid-update."""
from __future__ import annotations

import signal
from typing import Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class StopRequest:
    """Turns SIGTERM/SIGUSR2 into a flag the loop reads between steps, so a checkpoint is never
    taken mid-update; afterwards the previous handler runs (submitit's requeue on SIGUSR2)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.previous: dict = {}

    def __enter__(self) -> "StopRequest":
        for signum in STOP_SIGNALS:
            try:
                self.previous[signum] = signal.signal(signum, self._set)
            except ValueError:  # not the main thread: the caller owns signals
                pass
        return self

    def _set(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def hand_over(self) -> None:
        if self.signum is None:  # another rank of the cell was signalled: the group stops together
            self.__exit__()
            raise SystemExit(128 + signal.SIGTERM)
        previous = self.previous.get(self.signum)
        self.__exit__()
        if callable(previous):
            previous(self.signum, None)
        raise SystemExit(128 + self.signum)
