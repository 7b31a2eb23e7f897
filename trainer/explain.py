"""Prints the parameterization table for one model: every parameter group's rule, with its source.

    python -m trainer.explain width=1024 depth=16 param=mup optimizer=muon_kimi [--json]
    python -m trainer.explain model=trainer.hf_models:llama width=64 depth=2

Takes the trainer's overrides. The human form is an aligned table under a header line describing the
model; --json prints a list of rows {name, role, shape, init_std, multiplier, lr, weight_decay, eps,
table}. Roles are inferred from shapes (trainer.roles); parameters whose role shape cannot decide
are listed, flagged ``ambiguous``, with why, after the table, and the command exits 2. Other bad input
prints one error line and exits 2.
"""
from __future__ import annotations

import json
import sys
from typing import Optional


from .cli import load_config
from .config import TrainConfig, recorded_default
from .data.tokenizer import vocab_size_of
from .model_factory import meta_model
from .parameterization import ParamGroup, model_layout, optimizer_setting, param_groups, ratios
from .roles import ROLES, AmbiguousRoles
from .rules import OPTIMIZER_SETTINGS

USAGE = "usage: python -m trainer.explain [key=value ...] [--json]"


def explain(cfg: TrainConfig, vocab_size: int) -> list[ParamGroup]:
    """The parameter groups of cfg's model, built on the meta device (shapes only, no memory);
    AmbiguousRoles where roles are missing."""
    cfg.validate()
    return param_groups(meta_model(cfg, vocab_size), cfg)


def explain_known(cfg: TrainConfig, vocab_size: int) -> tuple[list[ParamGroup], dict[str, str]]:
    """The groups of the parameters whose role is known, and the ambiguous ones: {name: why}."""
    cfg.validate()
    layout = model_layout(cfg)
    return param_groups(meta_model(cfg, vocab_size), cfg, layout, known_only=True), layout.ambiguous


def to_row(group: ParamGroup) -> dict:
    return {"name": group.name, "role": group.role, "shape": list(group.shape), "init_std": group.init_std,
            "multiplier": group.multiplier, "lr": group.lr, "weight_decay": group.weight_decay,
            "eps": group.eps, "table": group.table}


def ambiguous_row(name: str, why: str) -> dict:
    """A --json row for a parameter without a role: role "ambiguous", why in place of the table."""
    return {**{key: None for key in ("shape", "init_std", "multiplier", "lr", "weight_decay", "eps")},
            "name": name, "role": "ambiguous", "table": why}


def header(cfg: TrainConfig, vocab_size: int) -> str:
    r_n, r_L = ratios(cfg)
    custom = cfg.model != recorded_default("model")
    return ((f"model={cfg.model} " + (f"model_args={cfg.model_args} " if cfg.model_args else "") if custom else "")
            + f"model: width={cfg.width} depth={cfg.depth} heads={cfg.n_head()} head_dim={cfg.width // cfg.n_head()} "
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
        groups, ambiguous = explain_known(cfg, vocab_size)
    except ValueError as err:
        print("error: " + " ".join(str(err).split("\n")), file=sys.stderr)
        return 2
    if "--json" in flags:
        print(json.dumps([to_row(g) for g in groups] + [ambiguous_row(name, why) for name, why in ambiguous.items()],
                         indent=1))
    else:
        print(header(cfg, vocab_size))
        print(render(groups))
        if ambiguous:
            print(f"ambiguous (no rule until model_roles={{pattern: role}} names them; roles: {', '.join(ROLES)}):")
            print("\n".join(f"  {name}  {why}" for name, why in ambiguous.items()))
    if ambiguous:
        print(f"error: {str(AmbiguousRoles(ambiguous))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
