"""Prints the parameterization table for one model: every parameter group's rule, with its source.

    python -m trainer.explain width=1024 depth=16 param=mup optimizer=muon_kimi [--json]

Takes the trainer's overrides. The human form is an aligned table under a header line describing the
model; --json prints a list of rows {name, role, shape, init_std, multiplier, lr, weight_decay, eps,
table}. Bad input prints one error line and exits 2.
"""
from __future__ import annotations

import json
import sys
from typing import Optional

import torch

from .cli import load_config
from .config import TrainConfig
from .data.tokenizer import vocab_size_of
from .model import GPT
from .parameterization import ParamGroup, model_shape, multipliers, optimizer_setting, param_groups, ratios
from .rules import OPTIMIZER_SETTINGS

USAGE = "usage: python -m trainer.explain [key=value ...] [--json]"


def explain(cfg: TrainConfig, vocab_size: int) -> list[ParamGroup]:
    """The parameter groups of cfg's model, built on the meta device (shapes only, no memory)."""
    cfg.validate()
    with torch.device("meta"):
        model = GPT(model_shape(cfg, vocab_size), multipliers(cfg))
    return param_groups(model, cfg)


def to_row(group: ParamGroup) -> dict:
    return {"name": group.name, "role": group.role, "shape": list(group.shape), "init_std": group.init_std,
            "multiplier": group.multiplier, "lr": group.lr, "weight_decay": group.weight_decay,
            "eps": group.eps, "table": group.table}


def header(cfg: TrainConfig, vocab_size: int) -> str:
    r_n, r_L = ratios(cfg)
    return (f"model: width={cfg.width} depth={cfg.depth} heads={cfg.n_head()} head_dim={cfg.width // cfg.n_head()} "
            f"attention_scale={cfg.attention_scale} vocab={vocab_size} "
            f"r_n={r_n:g} r_L={r_L:g} eta_base=2^{cfg.lr:g} ({cfg.eta_base:g}) "
            f"param={cfg.param} optimizer={cfg.optimizer}"
            + "".join(f" {name}={optimizer_setting(cfg, name)}" for name, takers in OPTIMIZER_SETTINGS.items()
                      if cfg.optimizer in takers))


def render(groups: list[ParamGroup]) -> str:
    columns = ["name", "role", "shape", "init_std", "multiplier", "lr", "weight_decay", "eps", "update", "table"]
    rows = [[g.name, g.role, "x".join(map(str, g.shape)),
             f"{g.init_std:.6g}" if g.init == "normal" else g.init,
             f"{g.multiplier:.6g}", f"{g.lr:.6g}", f"{g.weight_decay:.6g}",
             "-" if g.eps is None else f"{g.eps:.6g}", g.update, g.table] for g in groups]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in [columns, *rows])


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        print(USAGE)
        return 0
    flags = [a for a in args if a.startswith("-")]
    try:
        if set(flags) - {"--json"}:
            raise ValueError(f"unknown option {sorted(set(flags) - {'--json'})[0]!r}; {USAGE}")
        cfg = load_config([a for a in args if not a.startswith("-")])
        vocab_size = cfg.model_vocab(vocab_size_of(cfg.dataset, cfg.tokenizer))
        groups = explain(cfg, vocab_size)
    except ValueError as err:
        print("error: " + " ".join(str(err).split("\n")), file=sys.stderr)
        return 2
    if "--json" in flags:
        print(json.dumps([to_row(g) for g in groups], indent=1))
    else:
        print(header(cfg, vocab_size))
        print(render(groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
