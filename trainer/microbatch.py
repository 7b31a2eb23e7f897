"""One training step's gradients in micro-batches: batch_size / micro_batch_size forward/backward
passes summing into .grad, the same gradient as one pass over the whole batch.

Each micro-batch's mean loss is weighted by its share of the batch (all micro-batches hold the same
number of tokens), so the summed gradient is the gradient of the batch's mean loss, and clipping and
the optimizer step that follow see exactly what one big batch gives them.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

from .config import TrainConfig
from .cost import pick_micro_batch


def forward_backward(loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, micro_batch_size: int,
                     autocast: Callable) -> torch.Tensor:
    """Backward of the batch's mean loss into the parameters' .grad; returns that loss, detached
    and on the device (reading it back is the caller's choice: a host sync)."""
    parts = x.shape[0] // micro_batch_size
    total = None
    for xs, ys in zip(x.split(micro_batch_size), y.split(micro_batch_size)):
        with autocast():
            loss = loss_fn(xs, ys)
        (loss / parts if parts > 1 else loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total / parts if parts > 1 else total


def device_memory_bytes(device: torch.device) -> int:
    """What a run may fill: the GPU's memory, or the machine's physical memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def resolve_micro_batch(cfg: TrainConfig, vocab_size: int, device: torch.device, precision: str) -> int:
    """micro_batch_size, or (0: auto) the largest divisor of batch_size that the memory model
    (trainer.cost) fits into the device; on CUDA confirmed by a one-step probe (trainer.probe)."""
    if cfg.micro_batch_size:
        return cfg.micro_batch_size
    fits = pick_micro_batch(cfg, vocab_size, precision, device_memory_bytes(device), device.type)
    if fits is None:
        fits = 1  # the model says nothing fits: try the smallest, the run names what fails
    if device.type == "cuda":
        from .probe import confirmed_micro_batch

        fits = confirmed_micro_batch(cfg, vocab_size, device, precision, fits)
    return fits
