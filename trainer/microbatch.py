"""How many rows of a batch one forward/backward pass takes (micro_batch_size; trainer.step runs the
passes): the setting, or (0: auto) what the memory model fits into the device, on CUDA confirmed by
real steps (trainer.probe)."""
from __future__ import annotations

import os

import torch

from .config import TrainConfig
from .cost import pick_micro_batch
from .probe import confirmed_micro_batch


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
        fits = confirmed_micro_batch(cfg, vocab_size, device, precision, fits)
    return fits
