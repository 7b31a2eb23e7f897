"""The CUDA check of the memory model's micro batch: one real step at it, stepping down through the
divisors of batch_size on out-of-memory. Cached per (shape, device) for the process.

Untested here: the development machine has no GPU.
"""
from __future__ import annotations

import sys

import torch

from .config import TrainConfig
from .cost import divisors

_CACHE: dict[tuple, int] = {}


def _shape_key(cfg: TrainConfig, vocab: int, device: torch.device, precision: str) -> tuple:
    return (cfg.width, cfg.depth, cfg.seq_len, cfg.batch_size, vocab, cfg.head_dim, cfg.layernorm,
            cfg.optimizer, cfg.matrix_io, precision, cfg.activation_checkpointing,
            torch.cuda.get_device_name(device), torch.cuda.get_device_properties(device).total_memory)


def _one_step(cfg: TrainConfig, vocab: int, device: torch.device, precision: str, micro: int) -> None:
    from .microbatch import forward_backward
    from .optimizers import StepInputs, build_optimizers, step_optimizers
    from .parameterization import build_model, param_groups

    model = build_model(cfg, vocab).to(device)
    optimizers = build_optimizers(param_groups(model, cfg), cfg)
    x = torch.randint(0, vocab, (cfg.batch_size, cfg.seq_len), device=device)
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")  # noqa: E731
    forward_backward(model.loss, x, x, micro, autocast)
    step_optimizers(optimizers, StepInputs(model, x, autocast, micro))
    torch.cuda.synchronize(device)


def confirmed_micro_batch(cfg: TrainConfig, vocab: int, device: torch.device, precision: str,
                          estimate: int) -> int:
    key = _shape_key(cfg, vocab, device, precision)
    if key not in _CACHE:
        for micro in [d for d in reversed(divisors(cfg.batch_size)) if d <= estimate]:
            try:
                _one_step(cfg, vocab, device, precision, micro)
                _CACHE[key] = micro
                break
            except torch.cuda.OutOfMemoryError:
                print(f"probe: micro_batch_size={micro} ran out of memory, trying smaller", file=sys.stderr)
            finally:
                torch.cuda.empty_cache()
        else:
            raise ValueError(f"one step does not fit {torch.cuda.get_device_name(device)} even at "
                             f"micro_batch_size=1: try activation_checkpointing=true or a bigger GPU")
    return _CACHE[key]
