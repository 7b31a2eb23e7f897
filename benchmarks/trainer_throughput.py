"""Throughput of the trainer against a plain reference GPT-2 of the same shape, in one process.

    python benchmarks/trainer_throughput.py [--steps 10] [--repeats 3] [--threads 2] [--optimizers all]

For each vocab (256, 50304) and precision (fp32, bf16) it times training steps of
  * trainer: trainer.train.run with param=mup (multipliers, per-group rules) and the given optimizers,
  * reference: a plain nanoGPT-style GPT-2 (fused QKV, no multipliers) with plain AdamW,
on the same shape (width 256, depth 4, seq 256, batch 16) and data, and prints tokens/s, MFU against
this CPU's measured matmul peak, the ratio trainer / reference (target >= 1.0 at equal precision),
the median over --repeats rounds, and the optimizer step's share of a training step (forward,
backward, clipping and step timed apart in the trainer's own model and optimizers).
--optimizers takes a comma list or "all" (every optimizer the trainer has).
A step at vocab 50304 costs ~8x one at vocab 256 here, so it times fewer steps (--steps / 4, at least 2).
bf16 matmul on a CPU without AMX ran ~70x slower than fp32 here (see the measured peaks), so a bf16
step would take minutes: there bf16 is not timed, and the line says what a step would cost.
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.config import TrainConfig
from trainer.data import get_batch, load_tokens
from trainer.optimizers import OPTIMIZERS, StepInputs, build_optimizers, cpu_has_fast_bf16, step_optimizers
from trainer.parameterization import build_model, param_groups
from trainer.train import run

SHAPE = dict(width=256, depth=4, seq_len=256, batch_size=16)


class RefBlock(nn.Module):
    def __init__(self, n: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(n), nn.LayerNorm(n)
        self.c_attn, self.c_proj = nn.Linear(n, 3 * n), nn.Linear(n, n)
        self.fc, self.proj = nn.Linear(n, 4 * n), nn.Linear(4 * n, n)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class RefGPT(nn.Module):
    def __init__(self, vocab: int, seq_len: int, n: int, depth: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, n), nn.Embedding(seq_len, n)
        self.h = nn.ModuleList(RefBlock(n, n // 64) for _ in range(depth))
        self.ln_f, self.lm_head = nn.LayerNorm(n), nn.Linear(n, vocab, bias=False)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


def reference_tokens_per_s(vocab: int, precision: str, steps: int, tokens) -> float:
    torch.manual_seed(0)
    model = RefGPT(vocab, SHAPE["seq_len"], SHAPE["width"], SHAPE["depth"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    elapsed = 0.0
    for _ in range(steps):  # timed like the trainer's tokens_per_s: every step, batch fetch included
        t0 = time.perf_counter()
        x, y = get_batch(tokens, SHAPE["batch_size"], SHAPE["seq_len"], gen)
        with autocast():
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        elapsed += time.perf_counter() - t0
    return steps * SHAPE["batch_size"] * SHAPE["seq_len"] / elapsed


def trainer_tokens_per_s(vocab: int, optimizer: str, precision: str, steps: int) -> float:
    cfg = TrainConfig(**SHAPE, param="mup", optimizer=optimizer, lr=-8, steps=steps, warmup_steps=1,
                      eval_interval=0, eval_batches=1, log_interval=10**9, precision=precision,
                      dataset="embedded", tokenizer="byte", vocab_size=vocab)
    return run(cfg).tokens_per_s


def optimizer_step_share(vocab: int, optimizer: str, precision: str, steps: int, tokens) -> float:
    """Seconds in step_optimizers over seconds in the whole step, over ``steps`` steps after one warm-up."""
    cfg = TrainConfig(**SHAPE, param="mup", optimizer=optimizer, lr=-8, precision=precision, vocab_size=vocab)
    model = build_model(cfg, vocab, torch.Generator().manual_seed(0))
    optimizers = build_optimizers(param_groups(model, cfg), cfg)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    gen = torch.Generator().manual_seed(1)
    in_step = total = 0.0
    for i in range(steps + 1):
        t0 = time.perf_counter()
        x, y = get_batch(tokens, SHAPE["batch_size"], SHAPE["seq_len"], gen)
        with autocast():
            loss = model.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t1 = time.perf_counter()
        step_optimizers(optimizers, StepInputs(model, x, autocast))
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if i:  # the first step allocates optimizer state
            in_step, total = in_step + t2 - t1, total + t2 - t0
    return in_step / total


def matmul_peak_flops(dtype: torch.dtype, n: int = 1024, reps: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def flops_per_token(vocab: int) -> float:
    """6 N for the matmul parameters (embeddings excluded, lm_head included) + attention's 12 L n T."""
    n, L, T = SHAPE["width"], SHAPE["depth"], SHAPE["seq_len"]
    matmul_params = L * 12 * n * n + n * vocab
    return 6 * matmul_params + 12 * L * n * T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--optimizers", default="adamw,muon_kimi")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of reference and trainer runs")
    args = parser.parse_args()
    if args.optimizers == "all":
        args.optimizers = ",".join(OPTIMIZERS)
    unknown = sorted(set(args.optimizers.split(",")) - set(OPTIMIZERS))
    if unknown:
        parser.error(f"unknown optimizer(s) {', '.join(unknown)}: choose from {', '.join(OPTIMIZERS)} or all")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    peaks = {p: matmul_peak_flops(d) for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    for p, peak in peaks.items():
        print(f"measured matmul peak {p}: {peak / 1e9:.1f} GFLOP/s (1024x1024 @ 1024x1024)")
    print(f"{'vocab':>6} {'prec':>5} {'model':>22} {'tok/s':>9} {'MFU':>6} {'ratio':>6} {'opt step':>8}")
    # Byte tokens for both vocabularies (no network for the GPT-2 BPE here): the cost of a step
    # depends on the vocab size of the embedding and output layer, not on which ids occur.
    tokens = load_tokens("embedded", "byte").train
    for vocab in (256, 50304):
        for precision in ("fp32", "bf16"):
            tokens_per_step = SHAPE["batch_size"] * SHAPE["seq_len"]
            if precision == "bf16" and not cpu_has_fast_bf16():
                step_s = flops_per_token(vocab) * tokens_per_step / peaks["bf16"]
                print(f"{vocab:>6} {precision:>5} skipped: no fast bf16 matmul on this CPU "
                      f"(a step would take >= {step_s:.0f} s at the measured bf16 peak)")
                continue
            steps = max(2, args.steps // 4 ** (vocab > 256))
            mfu = lambda tps: tps * flops_per_token(vocab) / peaks[precision]
            # Rounds alternate which model runs first, so drift in this shared CPU's speed falls on
            # both; the ratio is the median of the per-round ratios.
            rounds = []
            for r in range(args.repeats):
                measure = {"reference": lambda: reference_tokens_per_s(vocab, precision, steps, tokens)}
                for optimizer in args.optimizers.split(","):
                    measure[optimizer] = lambda o=optimizer: trainer_tokens_per_s(vocab, o, precision, steps)
                order = list(measure) if r % 2 == 0 else list(reversed(measure))
                rounds.append({name: measure[name]() for name in order})
            ref = statistics.median(r["reference"] for r in rounds)
            print(f"{vocab:>6} {precision:>5} {'reference (AdamW)':>22} {ref:>9,.0f} {mfu(ref):>6.1%}")
            for optimizer in args.optimizers.split(","):
                tps = statistics.median(r[optimizer] for r in rounds)
                ratios = [r[optimizer] / r["reference"] for r in rounds]
                share = optimizer_step_share(vocab, optimizer, precision, steps, tokens)
                print(f"{vocab:>6} {precision:>5} {'trainer mup ' + optimizer:>22} {tps:>9,.0f} "
                      f"{mfu(tps):>6.1%} {statistics.median(ratios):>6.2f} {share:>8.0%}  (rounds: "
                      + " ".join(f"{x:.2f}" for x in ratios) + ")", flush=True)


if __name__ == "__main__":
    main()
