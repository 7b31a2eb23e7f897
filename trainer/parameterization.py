"""The model built from the paper's parameterization rules (trainer.rules, the table as data): each
parameter's group, init, forward multiplier, lr, weight decay and eps, with the table it comes from.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from .config import TrainConfig
from .model import GPT, ModelShape, Multipliers
from .rules import DEFAULTS, EPS_UPDATES, FORWARD, HIDDEN, HIDDEN_BIAS, INPUT, OUTPUT, ROUTES, RULES


@dataclass
class ParamGroup:
    """One row of the explain table: all parameters sharing a rule."""
    name: str  # module path with the block index as '*', e.g. "h.*.attn.q.weight"
    role: str  # "input" | "hidden" | "hidden bias" | "output" | "norm"
    shape: tuple[int, ...]
    params: list[torch.nn.Parameter] = field(repr=False)
    init: str  # "normal" | "zeros" | "ones"
    init_std: Optional[float]  # for "normal"; None otherwise
    multiplier: float  # the forward multiplier of this parameter's block
    lr: float  # peak learning rate (eta_base = 2**cfg.lr, before the schedule)
    weight_decay: float
    eps: Optional[float]  # the Adam eps where the optimizer updating this group has one
    table: str  # the paper rule it comes from
    update: str  # the torch optimizer kind that updates it (Route.update)


def ratios(cfg: TrainConfig) -> tuple[float, float]:
    """(r_n, r_L) of section 4.3."""
    return cfg.width / cfg.base_width, cfg.depth / cfg.base_depth


def optimizer_setting(cfg: TrainConfig, name: str):
    """An optimizer-only setting as the optimizer runs it: its default where the config leaves it unset."""
    return DEFAULTS[cfg.optimizer, name] if getattr(cfg, name) is None else getattr(cfg, name)


def multipliers(cfg: TrainConfig) -> Multipliers:
    """alpha of the input layer, of every residual block and of the output layer (cfg validated:
    TrainConfig.validate checks the names)."""
    r = ratios(cfg)
    return Multipliers(**{position: FORWARD[column].multiplier.ratio(cfg.param)(*r)
                          for position, column in (("input", INPUT), ("block", HIDDEN), ("output", OUTPUT))})


@dataclass(frozen=True)
class _Place:
    role: str
    column: str  # the tables' column whose rules apply
    position: str  # whose forward multiplier scales it: "input" | "block" | "output"
    init: str


def _place(model: GPT, module_name: str, module: nn.Module, param_name: str) -> _Place:
    in_block = module_name.startswith("h.")
    if isinstance(module, nn.Embedding):
        return _Place("input", INPUT, "input", "normal")
    if isinstance(module, nn.LayerNorm):
        init = "ones" if param_name == "weight" else "zeros"
        return _Place("norm", HIDDEN_BIAS, "block", init) if in_block else _Place("norm", INPUT, "output", init)
    if isinstance(module, nn.Linear) and module is model.lm_head and param_name == "weight":
        return _Place("output", OUTPUT, "output", "normal")
    if isinstance(module, nn.Linear) and in_block:
        if param_name == "weight":
            return _Place("hidden", HIDDEN, "block", "normal")
        return _Place("hidden bias", HIDDEN_BIAS, "block", "zeros")
    raise TypeError(f"no parameterization rule for {module_name}.{param_name} ({type(module).__name__})")


def param_groups(model: GPT, cfg: TrainConfig) -> list[ParamGroup]:
    """Every parameter of the model in exactly one group, with its init, multiplier, lr, wd and eps."""
    r = ratios(cfg)
    alphas = dataclasses.asdict(multipliers(cfg))
    hidden_route, other_route = ROUTES[cfg.optimizer]
    bases = {"lr": cfg.eta_base, "weight_decay": cfg.weight_decay, "eps": cfg.adam_eps}
    groups: dict[str, ParamGroup] = {}
    for module_name, module in model.named_modules():
        for param_name, p in module.named_parameters(recurse=False):
            name = re.sub(r"^h\.\d+\.", "h.*.", f"{module_name}.{param_name}")
            if name in groups:
                groups[name].params.append(p)
                continue
            place = _place(model, module_name, module, param_name)
            matrix = place.role == "hidden" or (cfg.matrix_io and place.role in ("input", "output"))
            route = hidden_route if matrix else other_route
            rules = RULES[route.table][place.column]
            values = {key: bases[key] * getattr(rules, key).ratio(cfg.param)(*r)
                      for key in ("lr", "weight_decay", "eps") if getattr(rules, key) is not None}
            init_std = (cfg.init_std * FORWARD[place.column].init_std.ratio(cfg.param)(*r)
                        if place.init == "normal" else None)
            groups[name] = ParamGroup(
                name=name, role=place.role, shape=tuple(p.shape), params=[p], init=place.init,
                init_std=init_std, multiplier=alphas[place.position], lr=values["lr"],
                weight_decay=values["weight_decay"], eps=values.get("eps") if route.update in EPS_UPDATES else None,
                table=_citation(route.table, place, cfg.param), update=route.update)
    return list(groups.values())


def _citation(table: str, place: _Place, param: str) -> str:
    text = f"{table}, {place.column}"
    if place.role == "norm":
        text += " (LayerNorm as " + ("hidden bias)" if place.column == HIDDEN_BIAS else "input bias)")
    if param == "sp":
        return text + ", SP (gray)"
    if param == "mup_k1" and place.position == "block":
        return text + " + B.1 (k=1)"
    return text


def model_shape(cfg: TrainConfig, vocab_size: int) -> ModelShape:
    return ModelShape(vocab_size=vocab_size, seq_len=cfg.seq_len, width=cfg.width, depth=cfg.depth,
                      n_head=cfg.n_head(), layernorm=cfg.layernorm,
                      attention_scale=attention_scale(cfg))


def attention_scale(cfg: TrainConfig) -> Optional[float]:
    """The factor on q.k: None (SDPA's own 1/sqrt(d_head), as before the setting existed) or 1/d_head."""
    return None if cfg.attention_scale == "inv_sqrt_d" else cfg.n_head() / cfg.width


def build_model(cfg: TrainConfig, vocab_size: int, generator: Optional[torch.Generator] = None) -> GPT:
    """A CPU model with the parameterization's multipliers, every parameter initialised per its group,
    recomputing its blocks in backward where cfg.activation_checkpointing asks."""
    with torch.device("meta"):  # skip nn's default init: every parameter is set below
        model = GPT(model_shape(cfg, vocab_size), multipliers(cfg))
    model = model.to_empty(device="cpu")
    model.activation_checkpointing = cfg.activation_checkpointing
    with torch.no_grad():
        for group in param_groups(model, cfg):
            for p in group.params:
                if group.init == "normal":
                    p.normal_(0.0, group.init_std, generator=generator)
                else:
                    p.fill_(1.0 if group.init == "ones" else 0.0)
    return model
