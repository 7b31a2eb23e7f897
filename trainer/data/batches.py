"""Batches of token windows: random ones for training, a fixed set for validation."""
from __future__ import annotations

import numpy as np
import torch


def get_batch(tokens: np.ndarray, batch_size: int, seq_len: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows x (int64, CPU) and y = x shifted by one; starts come from ``generator`` (CPU),
    so a run is reproducible from its seed and resumable from the generator's saved state."""
    n_starts = len(tokens) - seq_len
    if n_starts < 1:
        raise ValueError(
            f"a token split of {len(tokens):,} tokens is shorter than seq_len + 1 = {seq_len + 1}: "
            "lower seq_len or use a dataset with more text"
        )
    starts = torch.randint(n_starts, (batch_size,), generator=generator).numpy()
    windows = np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)
    windows = torch.from_numpy(windows)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def fixed_batches(tokens: np.ndarray, n_batches: int, batch_size: int, seq_len: int,
                  seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same validation batches for every cell of a sweep: drawn from their own seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return [get_batch(tokens, batch_size, seq_len, generator) for _ in range(n_batches)]
