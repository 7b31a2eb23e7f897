"""Coordinate check (paper D.2): RMS of every block's output over the first training steps.

    python -m trainer.coord_check --widths 64,128,256,512 --params sp,mup --out coord.json depth=2

D.2's protocol: 10 steps at a constant lr of 2^-7, batch 8, gradient clipping 1, 3 seeds. Under a
parameterization that transfers, the last block's output RMS stays flat across widths (and depths).
Rows are written as JSON records {param, optimizer, width, depth, seed, step, block, rms} that the
analysis stage plots.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from .config import TrainConfig
from .data import DataUnavailable, get_batch, load_tokens
from .optimizers import StepInputs, build_optimizers, step_optimizers
from .parameterization import build_model, param_groups

D2 = {"lr": -7.0, "batch_size": 8, "grad_clip": 1.0, "steps": 10, "warmup_steps": 0}  # D.2: constant lr


def rms(x: torch.Tensor) -> float:
    return x.float().pow(2).mean().sqrt().item()


def check_one(cfg: TrainConfig, tokens) -> list[dict]:
    """Trains one model for cfg.steps steps at constant lr; RMS of each block output before each step
    and after the last one (step t = updates done so far)."""
    model = build_model(cfg, tokens.vocab_size, torch.Generator().manual_seed(cfg.seed))
    optimizers = build_optimizers(param_groups(model, cfg), cfg)
    batches = torch.Generator().manual_seed(cfg.seed + 1)
    rows = []
    for step in range(cfg.steps + 1):
        x, y = get_batch(tokens.train, cfg.batch_size, cfg.seq_len, batches)
        logits, outputs = model(x, return_block_outputs=True)
        rows += [{"param": cfg.param, "optimizer": cfg.optimizer, "width": cfg.width, "depth": cfg.depth,
                  "seed": cfg.seed, "step": step, "block": i, "rms": rms(h.detach())}
                 for i, h in enumerate(outputs)]
        if step == cfg.steps:
            break
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        step_optimizers(optimizers, StepInputs(model, x, nullcontext))
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
    return rows


def coord_check(base: TrainConfig, widths, depths, params, seeds=(0, 1, 2)) -> list[dict]:
    if base.threads:
        torch.set_num_threads(base.threads)
    tokens = load_tokens(base.dataset, base.tokenizer, base.data_dir)
    rows = []
    for param in params:
        for width in widths:
            for depth in depths:
                for seed in seeds:
                    cfg = dataclasses.replace(base, param=param, width=width, depth=depth, seed=seed)
                    cfg.validate()
                    rows += check_one(cfg, tokens)
                    last = [r["rms"] for r in rows[-depth:]]
                    print(f"{param} width={width} depth={depth} seed={seed}: last block RMS "
                          f"{last[-1]:.4g} after {cfg.steps} steps", file=sys.stderr)
    return rows


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main(argv: list[str]) -> int:
    from .cli import load_config

    parser = argparse.ArgumentParser(prog="python -m trainer.coord_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=_ints, default=[64, 128, 256, 512])
    parser.add_argument("--depths", type=_ints, default=None, help="default: the config's depth")
    parser.add_argument("--params", default="sp,mup")
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    parser.add_argument("--out", required=True, help="JSON file for the records")
    parser.add_argument("overrides", nargs="*", help="trainer settings, e.g. depth=2 optimizer=adamw")
    args = parser.parse_args(argv)
    try:
        base = load_config([f"{k}={v}" for k, v in D2.items()] + args.overrides)
        rows = coord_check(base, args.widths, args.depths or [base.depth], args.params.split(","),
                           args.seeds)
    except (ValueError, DataUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows))
    print(f"wrote {len(rows)} records to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
