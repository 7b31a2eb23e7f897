"""The model built from the paper's parameterization rules (trainer.rules, the table as data): each
parameter's group, init, forward multiplier, lr, weight decay and eps, with the table it comes from.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from .config import TrainConfig
from .hooks import attach_multipliers
from .model import Multipliers
from .model_factory import make_model, meta_model, takes_multipliers
from .roles import Layout, Place, infer_layout
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


# The vocabulary the meta builds of role inference use: shapes along the vocabulary never change
# between them, so any size tells the roles; the real one is not known where param_groups is called.
LAYOUT_VOCAB = 512


def model_layout(cfg: TrainConfig) -> Layout:
    """Each parameter's role and group, the blocks and the output layer of cfg's model (trainer.roles),
    inferred from meta builds at cfg's width and depth, twice the width and one block deeper."""
    return infer_layout(lambda width, depth: meta_model(cfg, LAYOUT_VOCAB, width, depth), cfg.width, cfg.depth,
                        cfg.model_roles)


def param_groups(model: nn.Module, cfg: TrainConfig, layout: Optional[Layout] = None,
                 known_only: bool = False) -> list[ParamGroup]:
    """Every parameter of the model in exactly one group, with its init, multiplier, lr, wd and eps.
    ``layout``: cfg's model_layout (inferred here when not given); AmbiguousRoles where it has
    parameters whose role is not known, unless ``known_only`` (explain) leaves them out."""
    layout = layout or model_layout(cfg)
    if not known_only:
        layout.check()
    r = ratios(cfg)
    alphas = dataclasses.asdict(multipliers(cfg))
    hidden_route, other_route = ROUTES[cfg.optimizer]
    bases = {"lr": cfg.eta_base, "weight_decay": cfg.weight_decay, "eps": cfg.adam_eps}
    groups: dict[str, ParamGroup] = {}
    for param_name, p in model.named_parameters():
        if param_name in layout.ambiguous:
            continue
        if param_name not in layout.places:
            raise ValueError(f"model={cfg.model}: parameter {param_name} is not in the model its factory builds "
                             f"on the meta device (the factory must build the same model on every device)")
        name, place = layout.places[param_name]
        if name in groups:
            groups[name].params.append(p)
            continue
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


def _citation(table: str, place: Place, param: str) -> str:
    text = f"{table}, {place.column}"
    if place.role == "norm":
        text += " (LayerNorm as " + ("hidden bias)" if place.column == HIDDEN_BIAS else "input bias)")
    if param == "sp":
        return text + ", SP (gray)"
    if param == "mup_k1" and place.position == "block":
        return text + " + B.1 (k=1)"
    return text


def build_model(cfg: TrainConfig, vocab_size: int, generator: Optional[torch.Generator] = None) -> nn.Module:
    """cfg's model on the CPU with the parameterization's multipliers (its own, or hooks: trainer.hooks),
    every parameter initialised per its group, recomputing its blocks in backward where
    cfg.activation_checkpointing asks."""
    layout = model_layout(cfg)
    layout.check()
    alphas = multipliers(cfg)
    if any(True for _ in meta_model(cfg, vocab_size).buffers()):
        # Buffers (rotary tables) are computed at construction: build on the CPU, outside the global
        # random stream (every parameter is set below).
        with torch.random.fork_rng(devices=[]):
            model = make_model(cfg, vocab_size, alphas)
    else:
        with torch.device("meta"):  # skip nn's default init: every parameter is set below
            model = make_model(cfg, vocab_size, alphas)
        model = model.to_empty(device="cpu")
    if hasattr(model, "activation_checkpointing"):
        model.activation_checkpointing = cfg.activation_checkpointing
    elif cfg.activation_checkpointing:
        raise ValueError(f"activation_checkpointing=true: model={cfg.model} has no activation_checkpointing switch")
    with torch.no_grad():
        for group in param_groups(model, cfg, layout):
            for p in group.params:
                if group.init == "normal":
                    p.normal_(0.0, group.init_std, generator=generator)
                else:
                    p.fill_(1.0 if group.init == "ones" else 0.0)
    if not takes_multipliers(cfg):
        attach_multipliers(model, layout, alphas, cfg.model_branches.split())
    return model
