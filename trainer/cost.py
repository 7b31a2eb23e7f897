"""What a cell costs before it runs: parameters, FLOPs, peak memory and hours, from its config alone.
The one cost model of the project: ``python -m sweeper plan`` prints ``cell_cost``; the transfer
search's budget and a sweep's time left weigh cells by ``relative_compute``.

Counts follow trainer.model exactly (tests compare them with a built model). FLOPs per token are
6 N for the matrices (forward 2 N, backward 4 N; N without the embedding lookups, with the output
layer) plus 12 L n T for attention's score and value products (PaLM, Chowdhery et al. 2022, App. B).
Memory at a step's peak: fp32 weights and gradients, the optimizer's states (per optimizer below),
the activations autograd keeps per token, and the logits of one loss chunk (trainer.model's
chunked cross-entropy; Sophia's Hessian step makes a whole micro-batch's), plus the device's fixed
overhead. tests/test_memory_model.py checks that this never underestimates the measured tensor peak
of small CPU cells (trainer.probe.measured_peak_bytes); benchmarks/gpu_check.py does on a GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

from .config import TrainConfig, divisors, resolve_precision

GIB = 2 ** 30
# Logits one cross-entropy chunk holds: above this many the loss runs in chunks (trainer.loss), so no
# more than this many fp32 logits are alive at once.
LOSS_CHUNK_ELEMENTS = 2 ** 26
# Bytes per logit element alive at the loss: the logits in the matmul's dtype, their fp32
# log-probabilities, the gradient in x's dtype (at most 12), and room for the chunk's temporaries.
LOGIT_BYTES = 16
# Activation elements autograd keeps per token and block (trainer.model.Block): the residual input,
# LayerNorm outputs (2), q k v (3), the attention output and its contiguous copy (2), the second
# residual, the MLP's hidden before and after GELU (4 n each) -> 17 n.
BLOCK_ACTIVATIONS = 17
# Bytes per kept activation element: fp32, or under bf16 autocast about half (LayerNorm and the
# residual stream stay fp32, the matmul inputs and outputs are bf16).
ACTIVATION_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2.4}
# Fixed cost of the device: the CUDA context, cuBLAS workspaces and allocator slack.
DEVICE_OVERHEAD = {"cuda": 2 * GIB, "cpu": 0}
# The share of a device's memory a plan may fill with the model's estimate. The estimate bounds the
# tensors a CPU step allocates (tests/test_memory_model.py: 0.7-0.95 of it measured); on a GPU the
# caching allocator's fragmentation and library workspaces come on top, so a fifth stays free.
FILL = 0.8
MFU = 0.4  # model FLOPs utilisation assumed for hours: a well-run GPT-2 step on an H100/A100
# A cell of several ranks (trainer.distributed) averages its gradients in flat all-reduces of at
# most this many fp32 elements: the copy a step adds on each rank.
ALLREDUCE_BUCKET_ELEMENTS = 2 ** 25
# Throughput per GPU of a cell on N GPUs against one GPU, assumed for hours: data parallelism
# over NVLink within a node loses ~10% to the all-reduce (the gradients' bytes each step), across
# nodes more; `plan --scaling-efficiency` states another.
SCALING_EFFICIENCY = 0.9


@dataclass(frozen=True)
class Gpu:
    memory_gb: float
    tflops: float  # dense bf16 peak


GPUS = {"H100": Gpu(80, 989), "H200": Gpu(141, 989), "A100-40GB": Gpu(40, 312), "A100-80GB": Gpu(80, 312)}


def gpu_named(device_name: str, memory_gib: float) -> Optional[str]:
    """The GPUS entry of a device as torch names it ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"):
    its model in the name, and of that model's entries the one nearest its memory. The peaks are the
    SXM boards'; a PCIe H100's is lower (756 TFLOP/s), so its MFU against this one reads low."""
    entries = [name for name in GPUS if name.split("-")[0] in device_name]
    return min(entries, key=lambda name: abs(GPUS[name].memory_gb - memory_gib), default=None)


@dataclass(frozen=True)
class Params:
    total: int
    embedding: int  # the token and position lookups
    hidden_matrices: list  # (rows, cols) of each block matrix the matrix optimizers update
    io_matrices: list  # (rows, cols) of the input embedding and the output layer

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def params(cfg: TrainConfig, vocab: int) -> Params:
    n, L, V, T = cfg.width, cfg.depth, vocab, cfg.seq_len
    norm = 2 * n if cfg.layernorm else 0
    block = 4 * (n * n + n) + (4 * n * n + 4 * n) + (4 * n * n + n) + 2 * norm
    embedding = V * n + T * n
    total = embedding + L * block + norm + V * n
    hidden = [(n, n)] * (4 * L) + [(4 * n, n), (n, 4 * n)] * L
    return Params(total, embedding, hidden, [(V, n), (V, n)])


def flops_per_token(cfg: TrainConfig, vocab: int) -> float:
    """Model FLOPs of one training token (forward and backward)."""
    return 6 * params(cfg, vocab).non_embedding + 12 * cfg.depth * cfg.width * cfg.seq_len


def optimizer_bytes(cfg: TrainConfig, p: Params) -> float:
    """fp32 states: AdamW m, v; Muon and SSO a momentum per matrix; Lion m; Sophia m, h, the estimate
    between steps and the Hessian step's gradients; Shampoo L, R and their roots; SOAP Adam's m, v,
    G G^T, G^T G and their eigenbases. Matrix optimizers leave the rest (the io matrices unless
    matrix_io, vectors) to AdamW."""
    opt = cfg.optimizer
    per_element = {"adamw": 8, "sgd": 0, "lion": 4, "sophia": 16}
    if opt in per_element:
        return per_element[opt] * p.total
    matrices = p.hidden_matrices + (p.io_matrices if cfg.matrix_io else [])
    in_matrices = sum(r * c for r, c in matrices)
    rest = 8 * (p.total - in_matrices)
    squares = sum(r * r + c * c for r, c in matrices)
    if opt in ("muon", "muon_kimi", "sso"):
        return rest + 4 * in_matrices
    if opt == "shampoo":
        return rest + 8 * squares
    if opt == "soap":
        return rest + 8 * in_matrices + 16 * squares
    raise ValueError(f"no memory model for optimizer={opt!r}")


def loss_chunk_rows(vocab: int, elements: int = LOSS_CHUNK_ELEMENTS) -> int:
    """Rows of one cross-entropy chunk: as many rows of vocab logits as fit elements, at least one.
    trainer.model passes its own LOSS_CHUNK_ELEMENTS (a test patches that one)."""
    return max(1, elements // vocab)


def loss_rows(cfg: TrainConfig, micro_batch_size: int, vocab: int) -> int:
    """Rows of logits alive at once in the loss: the micro-batch's tokens, or a chunk of them."""
    rows = micro_batch_size * cfg.seq_len
    return rows if rows * vocab <= LOSS_CHUNK_ELEMENTS else loss_chunk_rows(vocab, LOSS_CHUNK_ELEMENTS)


def logit_rows(cfg: TrainConfig, micro_batch_size: int, vocab: int) -> int:
    """Rows of logits alive at a step's peak: the loss's, or under Sophia a whole micro-batch's in the
    Hessian estimate (trainer.optim.build.Sophia, unchunked)."""
    rows = loss_rows(cfg, micro_batch_size, vocab)
    return max(rows, micro_batch_size * cfg.seq_len) if cfg.optimizer == "sophia" else rows


@dataclass(frozen=True)
class Memory:
    weights: float
    grads: float
    optimizer: float
    activations: float
    logits: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.logits + self.overhead


def peak_memory(cfg: TrainConfig, vocab: int, micro_batch_size: int, precision: str,
                device_type: str = "cuda") -> Memory:
    p = params(cfg, vocab)
    tokens = micro_batch_size * cfg.seq_len
    n, L = cfg.width, cfg.depth
    act = ACTIVATION_BYTES[precision]
    per_block = BLOCK_ACTIVATIONS * n * act
    if cfg.activation_checkpointing:  # each block keeps its fp32 input; one block is recomputed at a time
        activations = tokens * (L * 4 * n + per_block)
    else:
        activations = tokens * L * per_block
    activations += tokens * 4 * n * 4  # embeddings, final LayerNorm, the loss's input
    weights = 4 * p.total
    # bf16 autocast keeps a bf16 copy of each weight for the step
    weights += 2 * p.total if precision == "bf16" else 0
    return Memory(weights=weights, grads=4 * p.total, optimizer=optimizer_bytes(cfg, p),
                  activations=activations, logits=logit_rows(cfg, micro_batch_size, vocab) * vocab * LOGIT_BYTES,
                  overhead=DEVICE_OVERHEAD.get(device_type, 0))


def ranks(cfg: TrainConfig) -> int:
    """The data-parallel ranks of a cell: gpus_per_cell on each of nodes_per_cell nodes."""
    return cfg.gpus_per_cell * cfg.nodes_per_cell


def rank_memory(cfg: TrainConfig, vocab: int, micro_batch_size: int, precision: str,
                device_type: str = "cuda", sharded: bool = False) -> Memory:
    """Peak memory on each rank of a cell (peak_memory for one rank): its micro-batch's activations
    and the gradient all-reduce's bucket beside a whole copy of weights, gradients and optimizer
    states; sharded (FSDP, ZeRO-3), those split over the ranks, plus one block's weights and
    gradients gathered whole while it runs."""
    m = peak_memory(cfg, vocab, micro_batch_size, precision, device_type)
    n = ranks(cfg)
    if n == 1:
        return m
    p = params(cfg, vocab)
    if not sharded:
        return replace(m, grads=m.grads + 4 * min(p.total, ALLREDUCE_BUCKET_ELEMENTS))
    block = (p.total - p.embedding - vocab * cfg.width) / cfg.depth
    weight_bytes = m.weights / p.total  # fp32, and bf16 autocast's copy
    return replace(m, weights=m.weights / n + weight_bytes * block, grads=m.grads / n + 4 * block,
                   optimizer=m.optimizer / n)


def pick_micro_batch(cfg: TrainConfig, vocab: int, precision: str, capacity_bytes: float,
                     device_type: str = "cuda", sharded: bool = False) -> Optional[int]:
    """The largest divisor of each rank's rows (batch_size on one rank) whose step fits FILL of the
    capacity; None when none does."""
    for micro in reversed(divisors(cfg.batch_size // ranks(cfg))):
        if rank_memory(cfg, vocab, micro, precision, device_type, sharded).total <= FILL * capacity_bytes:
            return micro
    return None


def run_flops(cfg: TrainConfig, vocab: int) -> float:
    """Model FLOPs of the whole run: its training tokens, and the eval passes (forward: a third)."""
    tokens = cfg.batch_size * cfg.seq_len
    evals = (cfg.steps // cfg.eval_interval if cfg.eval_interval else 0) + 1
    return flops_per_token(cfg, vocab) * tokens * (cfg.steps + evals * cfg.eval_batches / 3)


def hardware_factor(cfg: TrainConfig, vocab: int, micro_batch_size: int) -> float:
    """Executed FLOPs over model FLOPs: activation checkpointing runs each block's forward again,
    a chunked loss the output layer's forward."""
    per_token = flops_per_token(cfg, vocab)
    extra = 0.0
    if cfg.activation_checkpointing:
        extra += (per_token - 6 * vocab * cfg.width) / 3  # the blocks' forward
    if loss_rows(cfg, micro_batch_size, vocab) < micro_batch_size * cfg.seq_len:
        extra += 2 * vocab * cfg.width
    return 1 + extra / per_token


def hours(cfg: TrainConfig, vocab: int, micro_batch_size: int, tflops: float, mfu: float = MFU,
          efficiency: float = SCALING_EFFICIENCY) -> float:
    """Wall-clock hours of a cell on its ranks: one GPU's, over ranks x scaling efficiency."""
    gpus = ranks(cfg)
    speedup = gpus * efficiency if gpus > 1 else 1.0
    return run_flops(cfg, vocab) * hardware_factor(cfg, vocab, micro_batch_size) / (tflops * 1e12 * mfu) / 3600 / speedup


def fit_advice(cfg: TrainConfig, vocab: int, precision: str, capacity_bytes: float) -> str:
    """What would make a cell fit that does not at micro batch 1."""
    if not cfg.activation_checkpointing:
        ckpt = replace(cfg, activation_checkpointing=True)
        if pick_micro_batch(ckpt, vocab, precision, capacity_bytes) is not None:
            return "activation_checkpointing=true"
    need = peak_memory(replace(cfg, activation_checkpointing=True), vocab, 1, precision).total / FILL
    bigger = [name for name, gpu in GPUS.items() if gpu.memory_gb * GIB >= need]
    return (f"a GPU with >= {math.ceil(need / GIB)} GB and activation_checkpointing=true"
            + (f" ({', '.join(bigger)})" if bigger else ""))


def relative_compute(width: float, depth: float, tokens: float = 1.0) -> float:
    """Training compute of a cell up to a constant, to weigh the cells of one sweep against each other
    (the transfer search's budget, a sweep's time left): tokens x the block matrices' parameters,
    12 n^2 L (attention 4 n^2, MLP 8 n^2), the part of 6 N that grows with the sizes swept."""
    return tokens * 12 * float(width) ** 2 * float(depth)


def cell_relative_compute(cfg: TrainConfig) -> float:
    """relative_compute of the tokens a cell trains on."""
    return relative_compute(cfg.width, cfg.depth, cfg.steps * cfg.batch_size * cfg.seq_len)


@dataclass(frozen=True)
class CellCost:
    config: TrainConfig
    params: int
    params_non_embedding: int
    flops_per_token: float
    flops: float
    micro_batch_size: Optional[int]  # None: does not fit even at 1
    peak_memory_gb: float  # on each GPU of the cell
    hours: float  # wall-clock, on the cell's GPUs
    advice: Optional[str]  # what would make an unfitting cell fit
    gpus: int = 1
    sharded_memory_gb: Optional[float] = None  # on each GPU, sharded (FSDP); None for one GPU
    needs_shard: bool = False  # does not fit whole on a GPU at micro batch 1, would sharded

    @property
    def gpu_hours(self) -> float:
        return self.hours * self.gpus

    def to_json(self) -> dict:
        c = self.config
        return {"width": c.width, "depth": c.depth, "lr": c.lr, "params": self.params, "flops": self.flops,
                "micro_batch_size": self.micro_batch_size, "peak_memory_gb": round(self.peak_memory_gb, 3),
                "hours": self.hours, "gpus": self.gpus, "gpu_hours": self.gpu_hours,
                "sharded_memory_gb": None if self.sharded_memory_gb is None else round(self.sharded_memory_gb, 3),
                "needs_shard": self.needs_shard}


def cell_cost(cfg: TrainConfig, vocab: int, gpu: Gpu, mfu: float,
              efficiency: float = SCALING_EFFICIENCY) -> CellCost:
    """A cell's parameters, FLOPs, micro batch, peak memory per GPU and hours on its gpus_per_cell x
    nodes_per_cell ``gpu``s (at cfg's precision as a GPU resolves it); on several, also its memory
    per GPU sharded, and whether it needs sharding."""
    precision = resolve_precision(cfg.precision, "cuda")
    capacity = gpu.memory_gb * GIB
    micro = cfg.micro_batch_size or pick_micro_batch(cfg, vocab, precision, capacity)
    p = params(cfg, vocab)
    n = ranks(cfg)
    sharded = rank_memory(cfg, vocab, micro or 1, precision, sharded=True).total / GIB if n > 1 else None
    needs_shard = (n > 1 and micro is None
                   and pick_micro_batch(cfg, vocab, precision, capacity, sharded=True) is not None)
    return CellCost(
        config=cfg, params=p.total, params_non_embedding=p.non_embedding,
        flops_per_token=flops_per_token(cfg, vocab), flops=run_flops(cfg, vocab), micro_batch_size=micro,
        peak_memory_gb=rank_memory(cfg, vocab, micro or 1, precision).total / GIB,
        hours=hours(cfg, vocab, micro or 1, gpu.tflops, mfu, efficiency),
        advice=None if micro or needs_shard else fit_advice(cfg, vocab, precision, capacity),
        gpus=n, sharded_memory_gb=sharded, needs_shard=needs_shard)
