"""Real training steps at a shape, to check the memory model (trainer.cost) against the device.

``confirmed_micro_batch``: the CUDA check of the model's micro batch, stepping down through the
divisors of batch_size while a step fails to allocate; cached per (shape, device) for the process.
``measured_peak_bytes``: what a step's peak really is, on CUDA from the allocator's statistics
(``cuda_peaks``: live tensors, reserved bytes and the context beside them), on a
CPU from torch's memory profiler (every tensor allocation, so neither the process's other memory nor
the C allocator's slack counts). Both run ``steps``: two steps, the second with the optimizer's state
in place, as every later step has it.
"""
from __future__ import annotations

import gc
import sys
from dataclasses import replace

import torch

from .config import TrainConfig
from .cost import divisors
from .model_factory import loss_function
from .optim.build import build_optimizers
from .parameterization import build_model, param_groups
from .precision import Precision
from .step import TrainingStep

_CACHE: dict[tuple, int] = {}
# What a failed allocation raises: the caching allocator's OutOfMemoryError, or a RuntimeError from a
# library that allocates on its own (cuBLAS, cuSOLVER, cuDNN) and reports it in its message.
_ALLOCATION_FAILURES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUSOLVER_STATUS_ALLOC_FAILED",
                        "CUDNN_STATUS_ALLOC_FAILED", "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE")


def is_allocation_failure(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and any(text in str(err) for text in _ALLOCATION_FAILURES))


def _shape_key(cfg: TrainConfig, vocab: int, device: torch.device, precision: str) -> tuple:
    return (cfg.model, repr(cfg.model_args), cfg.width, cfg.depth, cfg.seq_len, cfg.batch_size, vocab, cfg.head_dim, cfg.layernorm,
            cfg.optimizer, cfg.matrix_io, cfg.hessian_interval, precision, cfg.activation_checkpointing,
            cfg.compile, torch.cuda.get_device_name(device), torch.cuda.get_device_properties(device).total_memory)


def steps(cfg: TrainConfig, vocab: int, device: torch.device, precision: str, micro: int, n: int = 2) -> None:
    """``n`` training steps of a fresh model on random tokens: forward/backward in micro-batches,
    clipping, the optimizers (Sophia's Hessian estimate on the first), as trainer.train runs them."""
    model = build_model(cfg, vocab).to(device)
    step = TrainingStep(model, build_optimizers(param_groups(model, cfg), replace(cfg, precision=precision)),
                        Precision.of(precision, device), micro, cfg.grad_clip,
                        loss_fn=torch.compile(loss_function(model)) if cfg.compile else loss_function(model))
    x = torch.randint(0, vocab, (cfg.batch_size, cfg.seq_len), device=device)
    for _ in range(n):
        step(x, x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    # A failed step's tensors hang on its traceback's frames until collected: collect, then return
    # the allocator's cached blocks, or the next (smaller) try runs out of memory too.
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def confirmed_micro_batch(cfg: TrainConfig, vocab: int, device: torch.device, precision: str,
                          estimate: int) -> int:
    key = _shape_key(cfg, vocab, device, precision)
    if key not in _CACHE:
        for micro in [d for d in reversed(divisors(cfg.batch_size)) if d <= estimate]:
            try:
                steps(cfg, vocab, device, precision, micro)
                _CACHE[key] = micro
                break
            except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
                if not is_allocation_failure(err):
                    raise
                print(f"probe: micro_batch_size={micro} failed to allocate ({str(err).splitlines()[0][:120]}), "
                      f"trying smaller", file=sys.stderr)
            finally:
                _free(device)
        else:
            raise ValueError(f"one step does not fit {torch.cuda.get_device_name(device)} even at "
                             f"micro_batch_size=1: try activation_checkpointing=true or a bigger GPU")
    return _CACHE[key]


def measured_peak_bytes(cfg: TrainConfig, vocab: int, device: torch.device, precision: str, micro: int) -> int:
    """The peak of tensor memory over ``steps`` (weights, gradients, optimizer state, activations,
    workspaces), not counting the device's fixed overhead (trainer.cost.DEVICE_OVERHEAD)."""
    if device.type == "cuda":
        return cuda_peaks(cfg, vocab, device, precision, micro)[1]
    _free(device)
    return _cpu_peak(lambda: steps(cfg, vocab, device, precision, micro))


def cuda_peaks(cfg: TrainConfig, vocab: int, device: torch.device, precision: str, micro: int) -> tuple[int, int, int]:
    """Over ``steps`` on CUDA: the peak of live tensor bytes, the peak of the allocator's reserved
    bytes, and what the device held besides before them (the CUDA context, its libraries)."""
    _free(device)
    free, total = torch.cuda.mem_get_info(device)
    context = total - free - torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    steps(cfg, vocab, device, precision, micro)
    return (torch.cuda.max_memory_allocated(device) - before, torch.cuda.max_memory_reserved(device) - before,
            context)


def _cpu_peak(fn) -> int:
    """The peak of live CPU tensor bytes while ``fn`` runs: the running sum of the allocation events
    (a free is a negative allocation) that torch's profiler records with profile_memory."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, todo = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while todo:
        node = todo.pop()
        todo.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak
