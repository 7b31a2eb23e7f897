"""What the training loop does differently on an accelerator, where every host read of a device value
waits for the GPU's whole queue: batches copied one step ahead without waiting, and step time from
the device's own events (its matmul precision: trainer.precision).

The loop asks ``is_async(device)`` rather than testing for CUDA itself, so that a test can run the
accelerator's path on a CPU with just the CUDA calls (pin_memory, events) replaced.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from .data.batches import get_batch


def is_async(device: torch.device) -> bool:
    """Whether kernels run behind the host's back: then a host read of a device value is a sync."""
    return device.type == "cuda"


class DeviceBatches:
    """Training batches from ``generator``, each copied to the device one step before it is used.
    On an asynchronous device the batch is pinned and copied with non_blocking=True, so the copy
    neither waits for the queue nor blocks the host. ``state()`` is the generator's state before
    the batch not yet handed out, so a checkpoint resumes with exactly the next batch."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator,
                 device: torch.device, rows: slice = slice(None)):
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.rows = rows  # this rank's rows of each global batch (trainer.distributed)
        self.generator, self.device = generator, device
        self._ahead: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def _fetch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        state = self.generator.get_state()
        x, y = get_batch(self.tokens, self.batch_size, self.seq_len, self.generator)
        x, y = x[self.rows], y[self.rows]
        if is_async(self.device):
            x, y = (t.pin_memory().to(self.device, non_blocking=True) for t in (x, y))
        else:
            x, y = x.to(self.device), y.to(self.device)
        return state, x, y

    def next(self, prefetch: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's batch; with ``prefetch`` the next step's copy is queued behind it."""
        _, x, y = self._ahead or self._fetch()
        self._ahead = self._fetch() if prefetch else None
        return x, y

    def state(self) -> torch.Tensor:
        return self._ahead[0] if self._ahead is not None else self.generator.get_state()


class StepTimer:
    """Seconds spent in training steps. On an asynchronous device, measured by device events from
    the first step after a read-back to the next read-back, where the loop syncs anyway; the host
    clock there would time only the launching of kernels."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0
        self._start = None

    def step_started(self) -> None:
        if self._start is None:
            self._start = self._event() if is_async(self.device) else time.perf_counter()

    def read_back(self) -> float:
        """Closes the open span (after the step's work is queued) and returns the total so far."""
        if self._start is not None:
            if is_async(self.device):
                end = self._event()
                end.synchronize()
                self.seconds += self._start.elapsed_time(end) / 1000
            else:
                self.seconds += time.perf_counter() - self._start
            self._start = None
        return self.seconds

    @staticmethod
    def _event():
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
