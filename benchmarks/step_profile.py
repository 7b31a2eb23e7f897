"""Where a training step's time goes: the trainer's model (param=mup, its optimizers) and the plain
reference GPT-2 of benchmarks/trainer_throughput.py with AdamW, one shape, under torch.profiler.

    python benchmarks/step_profile.py [--width 256] [--vocab 256] [--optimizer adamw] [--steps 3]
        [--threads 2]

Prints, for each model, the self time per kind of op (matmuls, attention, LayerNorm, GELU, the
loss's elementwise work, embedding, optimizer step, clipping, the rest) over --steps steps after
one warm-up step, and the step's matmul FLOPs (trainer.cost's per-token FLOPs) against the measured
fp32 matmul peak: how far the matmuls alone are from it, and what share of the step the rest takes
(the bound on what removing non-matmul work can gain).
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from trainer.config import TrainConfig
from trainer.cost import flops_per_token
from trainer.data.batches import get_batch
from trainer.data.tokens import load_tokens
from trainer.optim.build import build_optimizers
from trainer.parameterization import build_model, param_groups
from trainer_throughput import SHAPE, TOKENS_PER_STEP, RefGPT, matmul_peak_flops

KINDS = {  # aten op name fragments, first match wins
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention": ("scaled_dot_product", "flash_attention"),
    "layernorm": ("layer_norm",),
    "gelu": ("gelu",),
    "embedding": ("embedding",),
    "optimizer": ("adam", "_foreach_add", "_foreach_lerp", "_foreach_mul_", "_foreach_addcmul", "lerp",
                  "addcdiv", "addcmul", "sqrt"),
    "clipping": ("norm", "_foreach_mul", "clamp", "stack"),
    "loss (elementwise)": ("logsumexp", "gather", "scatter", "exp", "log_softmax", "nll_loss", "sub_",
                           "cross_entropy", "mul_"),
    "copies, adds": ("copy_", "add", "cat", "clone", "contiguous", "empty", "zero", "fill_"),
}


def kind_of(name: str) -> str:
    return next((kind for kind, parts in KINDS.items() if any(p in name for p in parts)), "other")


def profiled_steps(step, steps: int) -> tuple[float, dict[str, float], list[tuple[str, float]]]:
    step()  # optimizer state, allocations
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - started) / steps
    by_kind: dict[str, float] = defaultdict(float)
    ops = [(event.key, event.self_cpu_time_total / 1e6 / steps) for event in prof.key_averages()]
    for op, seconds in ops:
        by_kind[kind_of(op)] += seconds
    return wall, dict(by_kind), sorted(ops, key=lambda kv: -kv[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="the ops of most self time to list")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokens = load_tokens("embedded", "byte").train
    cfg = TrainConfig(**SHAPE, width=args.width, param="mup", optimizer=args.optimizer, lr=-8,
                      vocab_size=args.vocab)
    gen = torch.Generator().manual_seed(1)

    trainer_model = build_model(cfg, args.vocab, torch.Generator().manual_seed(0))
    trainer_opts = build_optimizers(param_groups(trainer_model, cfg), cfg)
    ref_model = RefGPT(args.vocab, SHAPE["seq_len"], args.width, SHAPE["depth"])
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)

    def step(model, loss_fn, optimizers):
        x, y = get_batch(tokens, SHAPE["batch_size"], SHAPE["seq_len"], gen)
        loss_fn(x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    peak = matmul_peak_flops(torch.float32)
    flops = flops_per_token(cfg, args.vocab) * TOKENS_PER_STEP
    print(f"width {args.width}, vocab {args.vocab}, {torch.get_num_threads()} threads; fp32 matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s; a step's model FLOPs {flops / 1e9:.1f} G = {flops / peak * 1e3:.0f} ms at peak")
    for name, run in (("reference (AdamW)", lambda: step(ref_model, ref_model, [ref_opt])),
                      (f"trainer mup {args.optimizer}", lambda: step(trainer_model, trainer_model.loss, trainer_opts))):
        wall, by_kind, ops = profiled_steps(run, args.steps)
        mm = by_kind.get("matmul", 0.0)
        print(f"{name}: {wall * 1e3:.0f} ms/step (profiled), matmuls {mm * 1e3:.0f} ms at "
              f"{flops / mm / 1e9 if mm else 0:.0f} GFLOP/s ({flops / peak / mm if mm else 0:.0%} of peak); "
              f"not matmul {1 - mm / wall:.0%} of the step")
        for kind, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1]):
            print(f"  {kind:>20} {seconds * 1e3:8.1f} ms {seconds / wall:6.1%}")
        print("  top ops: " + ", ".join(f"{op} {seconds / wall:.1%}" for op, seconds in ops[:args.top]))


if __name__ == "__main__":
    main()
