"""Throughput of the trainer against a plain reference GPT-2 of the same shape, in one process.

    python benchmarks/trainer_throughput.py [--steps 10] [--repeats 3] [--threads 2] [--optimizers all]
        [--widths 256,512] [--vocabs 256,50304] [--precisions fp32,bf16] [--compile off|on|both]
        [--peak-tflops T]

For each width (--widths), vocab (--vocabs) and precision (--precisions) it times training steps of
  * trainer: trainer.train.run with param=mup (multipliers, per-group rules) and the given optimizers,
  * reference: a plain nanoGPT-style GPT-2 (fused QKV, no multipliers) with plain AdamW,
on the same shape (depth 4, seq 256, batch 16) and data, and prints tokens/s, MFU, the ratio
trainer / reference (target >= 1.1 with AdamW in fp32), the median over --repeats rounds, and the
optimizer step's share of a training step (forward, backward, clipping and step timed apart in the
trainer's own model and optimizers). FLOPs per token are trainer.cost's. For the matrix optimizers
written here (Muon, Shampoo, SSO) it also prints the step's matmul FLOPs (Newton-Schulz, power
iteration, statistics, eigh counted as 9 n^3, root and preconditioning products) and its measured
time over those FLOPs' time at the measured peaks ("opt/peak", target <= 1.25): the Newton-Schulz
FLOPs at the peak of the dtype the optimizer runs it in (trainer.precision.Precision.newton_schulz_dtype:
bf16 on CUDA and AMX CPUs, fp32 elsewhere; the "peak" column names it), the rest (SSO's power
iteration, all of Shampoo's step) at the fp32 peak.
--optimizers takes a comma list or "all" (every optimizer the trainer has).
--compile: time the models eager (off, the default), under torch.compile (on), or both; each
compiled row's ratio is against the compiled reference.

Runs on CUDA when present, as the trainer does (fused AdamW, bf16 autocast, fp32 in full fp32),
with MFU against the GPU's dense bf16 peak from trainer.cost.GPUS, found by its name (or
--peak-tflops), for both precisions. There, and for compiled models anywhere, the first step (CUDA's
lazy setup, compilation) is left out of the timing. On a CPU, MFU is against this CPU's measured
matmul peak, and every step is timed.
A step at vocab 50304 costs ~8x one at vocab 256 here, so it times fewer steps (--steps / 4, at least 2).
bf16 matmul on a CPU without AMX ran ~70x slower than fp32 here (see the measured peaks), so a bf16
step would take minutes: there bf16 is not timed, and the line says what a step would cost.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.callbacks import Callback
from trainer.config import TrainConfig
from trainer.cost import GPUS, flops_per_token, gpu_named
from trainer.data.batches import get_batch
from trainer.data.tokens import load_tokens
from trainer.optim.build import OPTIMIZERS, build_optimizers
from trainer.parameterization import build_model, param_groups
from trainer.precision import Precision, cpu_has_fast_bf16
from trainer.step import TrainingStep
from trainer.train import run

SHAPE = dict(depth=4, seq_len=256, batch_size=16)  # and a width from --widths
TOKENS_PER_STEP = SHAPE["batch_size"] * SHAPE["seq_len"]
EIGH_FLOPS = 9  # x n^3: symmetric QR with eigenvectors (Golub & Van Loan), the usual estimate


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
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


def sync(device: torch.device) -> None:
    """Waits for the device's queued work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_tokens_per_s(width: int, vocab: int, precision: str, steps: int, tokens, device: torch.device,
                           compiled: bool, skip_first: bool) -> float:
    torch.manual_seed(0)
    model = RefGPT(vocab, SHAPE["seq_len"], width, SHAPE["depth"]).to(device)
    loss_fn = torch.compile(model) if compiled else model
    # fused on CUDA, as the trainer's AdamW (and nanoGPT's) is there
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0,
                            fused=True if device.type == "cuda" else None)
    gen = torch.Generator().manual_seed(1)
    autocast = Precision.of(precision, device).autocast
    timed_from = int(skip_first)
    for i in range(steps):  # timed like the trainer's tokens_per_s: every step, batch fetch included
        if i == timed_from:
            sync(device)
            started = time.perf_counter()
        x, y = get_batch(tokens, SHAPE["batch_size"], SHAPE["seq_len"], gen)
        x, y = x.to(device), y.to(device)
        with autocast():
            loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    loss.item()  # waits for the device, as the trainer's read-back at its last step
    return (steps - timed_from) * TOKENS_PER_STEP / (time.perf_counter() - started)


class LoggedRates(Callback):
    """The trainer's cumulative tokens/s at each step it logs (its first and last, here)."""

    def __init__(self) -> None:
        self.rates: dict[int, float] = {}

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.rates[step] = metrics["train/tokens_per_s"]


def trainer_tokens_per_s(width: int, vocab: int, optimizer: str, precision: str, steps: int,
                         device: torch.device, compiled: bool, skip_first: bool) -> float:
    cfg = TrainConfig(**SHAPE, width=width, param="mup", optimizer=optimizer, lr=-8, steps=steps, warmup_steps=1,
                      eval_interval=0, eval_batches=1, log_interval=10**9, precision=precision,
                      device=device.type, compile=compiled, dataset="embedded", tokenizer="byte",
                      vocab_size=vocab)
    logged = LoggedRates()
    result = run(cfg, callbacks=[logged])
    if not skip_first:
        return result.tokens_per_s
    # the loop's time up to a step is tokens / cumulative rate; the steps after the first take the rest
    first, last = (TOKENS_PER_STEP * s / logged.rates[s] for s in (1, steps))
    return (steps - 1) * TOKENS_PER_STEP / (last - first)


def optimizer_step_flops(cfg: TrainConfig, model: torch.nn.Module) -> tuple[float, float]:
    """Matmul FLOPs of one step of the matrix optimizers written here ((0, 0) for the others): those
    in the Newton-Schulz dtype (Muon's and SSO's iteration) and those in fp32 (SSO's power iteration,
    all of Shampoo), what the step would cost at the matmul peaks."""
    from trainer.optim.spectral import NS_STEPS
    from trainer.optim.sso import POWER_STEPS, ROOT_EVALUATIONS

    def newton_schulz(m: int, n: int) -> float:  # m <= n: X X^T, its square, the product with X
        return NS_STEPS * (4 * m * m * n + 2 * m ** 3)

    ns = fp32 = 0.0
    for group in param_groups(model, cfg):
        for p in group.params:
            r, c = p.shape if p.ndim == 2 else (0, 0)
            m, n = sorted((r, c))
            if group.update == "muon":
                ns += newton_schulz(m, n)
            elif group.update == "sso":
                ns += ROOT_EVALUATIONS * newton_schulz(m, n)
                fp32 += (POWER_STEPS + 1) * 4 * r * c
            elif group.update == "shampoo":
                roots = (EIGH_FLOPS + 2) * (r ** 3 + c ** 3)  # every step at the default frequency
                fp32 += 2 * (2 * r * r * c + 2 * r * c * c) + roots  # statistics, L^-1/4 G R^-1/4
    return ns, fp32


def optimizer_step_time(width: int, vocab: int, optimizer: str, precision: str, steps: int, tokens,
                        device: torch.device) -> tuple[float, float, tuple[float, float], str]:
    """(seconds in step_optimizers over seconds in the whole step, seconds per optimizer step, its
    matmul FLOPs in the Newton-Schulz dtype and in fp32, the name of that dtype's peak: "bf16" or
    "fp32"), over ``steps`` steps after one warm-up."""
    cfg = TrainConfig(**SHAPE, width=width, param="mup", optimizer=optimizer, lr=-8, precision=precision,
                      vocab_size=vocab)
    model = build_model(cfg, vocab, torch.Generator().manual_seed(0)).to(device)
    step = TrainingStep(model, build_optimizers(param_groups(model, cfg), cfg), Precision.of(precision, device),
                        SHAPE["batch_size"], cfg.grad_clip, loss_fn=model.loss)
    gen = torch.Generator().manual_seed(1)
    in_step = total = 0.0
    for i in range(steps + 1):
        t0 = time.perf_counter()
        x, y = get_batch(tokens, SHAPE["batch_size"], SHAPE["seq_len"], gen)
        x, y = x.to(device), y.to(device)
        step.gradients(x, y)
        sync(device)
        t1 = time.perf_counter()
        step.update(x)
        sync(device)
        t2 = time.perf_counter()
        if i:  # the first step allocates optimizer state
            in_step, total = in_step + t2 - t1, total + t2 - t0
    # the dtype the optimizers chose (trainer.precision.Precision.newton_schulz_dtype); fp32 where none iterates
    ns_dtype = next((o.ns_dtype for o in step.optimizers if hasattr(o, "ns_dtype")), torch.float32)
    return (in_step / total, in_step / steps, optimizer_step_flops(cfg, model),
            "bf16" if ns_dtype == torch.bfloat16 else "fp32")


def matmul_peak_flops(dtype: torch.dtype, n: int = 1024, reps: int = 3, tries: int = 5) -> float:
    """The best of ``tries`` timings of ``reps`` products: a peak, which one slow timing (a
    neighbour's burst read 175 against 298 GFLOP/s here) must not lower."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(tries):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def peaks_of(device: torch.device, peak_tflops: Optional[float]) -> dict[str, Optional[float]]:
    """FLOP/s per precision that MFU is against; None where no peak is known."""
    if device.type == "cpu":
        peaks = {p: matmul_peak_flops(d) for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
        for p, peak in peaks.items():
            print(f"measured matmul peak {p}: {peak / 1e9:.1f} GFLOP/s (1024x1024 @ 1024x1024)")
        return peaks
    name = torch.cuda.get_device_name(device)
    gpu = gpu_named(name, torch.cuda.get_device_properties(device).total_memory / 2**30)
    if peak_tflops is not None:
        source = "--peak-tflops"
    elif gpu is not None:
        peak_tflops, source = GPUS[gpu].tflops, f"the {gpu}'s dense bf16 peak"
    else:
        print(f"GPU {name}: no peak known (trainer.cost.GPUS), so no MFU; give --peak-tflops")
        return {"fp32": None, "bf16": None}
    # one yardstick for both precisions: bf16's dense peak (full fp32 matmuls reach a fraction of it)
    print(f"GPU {name}: MFU against {source}, {peak_tflops:g} TFLOP/s, for fp32 and bf16 alike")
    return {"fp32": peak_tflops * 1e12, "bf16": peak_tflops * 1e12}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--optimizers", default="adamw,muon_kimi")
    parser.add_argument("--widths", default="256,512", help="comma list of model widths")
    parser.add_argument("--vocabs", default="256,50304", help="comma list of vocabulary sizes")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of reference and trainer runs")
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off",
                        help="time the models eager, under torch.compile, or both")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="on CUDA: the peak MFU is against, for a GPU that trainer.cost.GPUS lacks")
    args = parser.parse_args()
    if args.optimizers == "all":
        args.optimizers = ",".join(OPTIMIZERS)
    unknown = sorted(set(args.optimizers.split(",")) - set(OPTIMIZERS))
    if unknown:
        parser.error(f"unknown optimizer(s) {', '.join(unknown)}: choose from {', '.join(OPTIMIZERS)} or all")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":  # as the trainer sets it: the reference may run before the trainer does
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    print(f"threads {torch.get_num_threads()}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    peaks = peaks_of(device, args.peak_tflops)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    print(f"{'width':>5} {'vocab':>6} {'prec':>5} {'model':>32} {'tok/s':>9} {'MFU':>6} {'ratio':>6} "
          f"{'opt step':>8} {'opt/peak':>8} {'peak':>6}")
    # Byte tokens for both vocabularies (no network for the GPT-2 BPE here): the cost of a step
    # depends on the vocab size of the embedding and output layer, not on which ids occur.
    tokens = load_tokens("embedded", "byte").train
    for width, vocab in ((w, v) for w in map(int, args.widths.split(",")) for v in map(int, args.vocabs.split(","))):
        per_token = flops_per_token(TrainConfig(**SHAPE, width=width), vocab)
        for precision in args.precisions.split(","):
            if device.type == "cpu" and precision == "bf16" and not cpu_has_fast_bf16():
                step_s = per_token * TOKENS_PER_STEP / peaks["bf16"]
                print(f"{width:>5} {vocab:>6} {precision:>5} skipped: no fast bf16 matmul on this CPU "
                      f"(a step would take >= {step_s:.0f} s at the measured bf16 peak)")
                continue
            steps = max(2, args.steps // 4 ** (vocab > 256))
            mfu = lambda tps: f"{tps * per_token / peaks[precision]:>6.1%}" if peaks[precision] else f"{'-':>6}"
            shares = {optimizer: optimizer_step_time(width, vocab, optimizer, precision, steps, tokens, device)
                      for optimizer in args.optimizers.split(",")}  # eager: the same for every mode

            def at_peak(optimizer: str) -> str:
                """Measured step time over its FLOPs' time at the peak of the dtype each runs in."""
                _, seconds, (ns_flops, fp32_flops), ns_peak = shares[optimizer]
                if not ns_flops + fp32_flops or not peaks[ns_peak] or not peaks["fp32"]:
                    return f"{'-':>8} {'-':>6}"
                ideal = ns_flops / peaks[ns_peak] + fp32_flops / peaks["fp32"]
                return f"{seconds / ideal:>8.2f} {ns_peak if ns_flops else 'fp32':>6}"

            for compiled in modes:
                skip_first = device.type == "cuda" or compiled
                suffix = ", compiled" if compiled else ""
                # Rounds alternate which model runs first, so drift in this shared CPU's speed falls on
                # both; the ratio is the median of the per-round ratios.
                rounds = []
                for r in range(args.repeats):
                    measure = {"reference": lambda: reference_tokens_per_s(
                        width, vocab, precision, steps, tokens, device, compiled, skip_first)}
                    for optimizer in args.optimizers.split(","):
                        measure[optimizer] = lambda o=optimizer: trainer_tokens_per_s(
                            width, vocab, o, precision, steps, device, compiled, skip_first)
                    order = list(measure) if r % 2 == 0 else list(reversed(measure))
                    rounds.append({name: measure[name]() for name in order})
                ref = statistics.median(r["reference"] for r in rounds)
                print(f"{width:>5} {vocab:>6} {precision:>5} {'reference (AdamW)' + suffix:>32} {ref:>9,.0f} "
                      f"{mfu(ref)}")
                for optimizer in args.optimizers.split(","):
                    tps = statistics.median(r[optimizer] for r in rounds)
                    ratios = [r[optimizer] / r["reference"] for r in rounds]
                    print(f"{width:>5} {vocab:>6} {precision:>5} {'trainer mup ' + optimizer + suffix:>32} "
                          f"{tps:>9,.0f} {mfu(tps)} {statistics.median(ratios):>6.2f} "
                          f"{shares[optimizer][0]:>8.0%} {at_peak(optimizer)}  (rounds: "
                          + " ".join(f"{x:.2f}" for x in ratios) + ")", flush=True)

if __name__ == "__main__":
    main()
