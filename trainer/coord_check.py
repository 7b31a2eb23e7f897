"""Coordinate check (paper D.2) over width and depth, with a verdict per parameterization.

    python -m trainer.coord_check --widths 32,...,256 --depths 2,...,16 --params sp,mup,mup_k1 \
        --out coord_check.json base_width=32 base_depth=2

D.2's protocol: 10 steps at a constant lr of 2^-7, batch 8, gradient clipping 1, 3 seeds. Widths are
varied at the first depth and depths at the first width (a cross from the base, not the full grid).
Every step the model sees one fixed probe batch; on it we measure the logits and each block's output
h, and their updates since initialisation (Δ = value at step t minus value at step 0), and inside
each block the MLP hidden layer's own update ΔW1 x (``measure``). Under a parameterization that
transfers, the last block's output, its update, the logits' update and ΔW1 x stay flat across widths
and depths (``trainer.coord_verdict`` judges the slopes). Rows are written as JSON records {param,
optimizer, width, depth, seed, step, site, block, rms, delta_rms}, site "block" or "mlp_update"
(block 0..depth-1) or "logits" (block null), which the analysis stage plots.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TrainConfig
from .coord_verdict import verdicts, verdict_text
from .data.batches import get_batch
from .data.cache import DataUnavailable
from .data.tokens import load_tokens
from .hooks import branches
from .model_factory import loss_function
from .optim.build import build_optimizers
from .parameterization import build_model, model_layout, param_groups
from .precision import Precision
from .roles import Layout
from .step import TrainingStep

D2 = {"lr": -7.0, "batch_size": 8, "grad_clip": 1.0, "steps": 10, "warmup_steps": 0}  # D.2: constant lr


def rms(x: torch.Tensor) -> float:
    return x.float().pow(2).mean().sqrt().item()


def check_one(cfg: TrainConfig, tokens) -> list[dict]:
    """Trains one model for cfg.steps steps at constant lr; before each step and after the last one
    (step t = updates done so far) the RMS of the logits, of each block's output and of each MLP's
    hidden-layer update (``measure``) on a fixed probe batch, and of their change since step 0."""
    model = build_model(cfg, tokens.vocab_size, torch.Generator().manual_seed(cfg.seed))
    layout = model_layout(cfg)
    # the whole batch in one pass, on the CPU, at the config's precision
    train_step = TrainingStep(model, build_optimizers(param_groups(model, cfg, layout), cfg),
                              Precision.of(cfg.precision, "cpu"), cfg.batch_size, cfg.grad_clip,
                              loss_fn=loss_function(model))
    batches = torch.Generator().manual_seed(cfg.seed + 1)
    probe, _ = get_batch(tokens.train, cfg.batch_size, cfg.seq_len, torch.Generator().manual_seed(cfg.seed + 2))
    cell = {"param": cfg.param, "optimizer": cfg.optimizer, "width": cfg.width, "depth": cfg.depth,
            "seed": cfg.seed}
    sites = Sites(model, layout, cfg.model_branches.split())
    rows, initial = [], None
    for step in range(cfg.steps + 1):
        logits, outputs, updates = sites.measure(probe)
        values = ([("block", i, h) for i, h in enumerate(outputs)] + [("mlp_update", i, u) for i, u in enumerate(updates)]
                  + [("logits", None, logits)])
        initial = initial or [value for *_, value in values]
        rows += [{**cell, "step": step, "site": site, "block": block, "rms": rms(value),
                  "delta_rms": rms(value - start)} for (site, block, value), start in zip(values, initial)]
        if step == cfg.steps:
            break
        train_step(*get_batch(tokens.train, cfg.batch_size, cfg.seq_len, batches))
    return rows


class Sites:
    """Where the check measures, on any model: each block's output, and in each block the first
    hidden matrix W1 of its last residual branch (the MLP's input layer in the usual layouts), whose
    own update the check follows: (W1 - W1 at step 0) x, x the layer's input now. The residual
    stream's h and dh are dominated by the embedding's update (AdamW, the same under every rule
    here), which hides a wrong hidden-matrix lr or depth rule; this one does not."""

    def __init__(self, model: nn.Module, layout: Layout, branch_patterns=()):
        self.model = model
        self.blocks = [model.get_submodule(name) for name in layout.blocks]
        hidden = [name for name, (_, place) in layout.places.items() if place.role == "hidden"]
        self.w1 = []
        for block in branches(model, layout, branch_patterns):
            matrices = [name for name in hidden if name.startswith(block[-1] + ".")]
            if not matrices:
                raise ValueError(f"{block[-1]} has no hidden matrix to follow")
            self.w1.append(model.get_submodule(matrices[0].rpartition(".")[0]))
        self.w1_start = [layer.weight.detach().clone() for layer in self.w1]

    def measure(self, probe: torch.Tensor):
        """The logits, each block's output and each W1's own update, on ``probe``."""
        outputs, inputs = [], []
        hooks = ([block.register_forward_hook(lambda module, args, out: outputs.append(
                    out[0] if isinstance(out, tuple) else out)) for block in self.blocks]
                 + [layer.register_forward_hook(lambda module, args, out: inputs.append(args[0]))
                    for layer in self.w1])
        try:
            with torch.no_grad():
                logits = self.model(probe)
                updates = [F.linear(x, layer.weight - w0) for x, layer, w0 in zip(inputs, self.w1, self.w1_start)]
        finally:
            for hook in hooks:
                hook.remove()
        return logits, outputs, updates


def shapes(widths, depths) -> list[tuple[int, int]]:
    """The cross through (widths[0], depths[0]): every width at the first depth, every depth at the
    first width."""
    return list(dict.fromkeys([(w, depths[0]) for w in widths] + [(widths[0], d) for d in depths]))


def coord_check(base: TrainConfig, widths, depths, params, seeds=(0, 1, 2)) -> list[dict]:
    if base.threads:
        torch.set_num_threads(base.threads)
    tokens = load_tokens(base.dataset, base.tokenizer, base.data_dir)
    rows = []
    for param in params:
        for width, depth in shapes(widths, depths):
            for seed in seeds:
                cfg = dataclasses.replace(base, param=param, width=width, depth=depth, seed=seed)
                cfg.validate()
                cell = check_one(cfg, tokens)
                rows += cell
                last = next(r for r in cell if r["step"] == cfg.steps and r["block"] == depth - 1)
                print(f"{param} width={width} depth={depth} seed={seed}: last block RMS {last['rms']:.4g}, "
                      f"its update {last['delta_rms']:.4g} after {cfg.steps} steps", file=sys.stderr)
    return rows


def _ints(text: str) -> list[int]:
    """'32,64' or '32,...,256' (doubling, as the sweep's grids)."""
    parts = text.split(",")
    if len(parts) == 3 and parts[1] == "...":
        low, high = int(parts[0]), int(parts[2])
        return [low * 2 ** i for i in range((high // low).bit_length()) if low * 2 ** i <= high]
    return [int(v) for v in parts]


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
    print(verdict_text(verdicts(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
