"""The paper's parameterization rules as one table of data, and the model built from them.

Every rule is the ratio form of section 4.3: a base value (alpha_base = 1, sigma_base = cfg.init_std,
eta_base = 2**cfg.lr, lambda_base = cfg.weight_decay, eps_base = cfg.adam_eps) times
r_n**a * r_L**b, with r_n = width / base_width and r_L = depth / base_depth. ``RULES`` mirrors the
rows of Tables 1-6 that the optimizers here use; each parameter group looks up its row and cites it.
``python -m trainer.explain`` prints the result for a model.

param: ``sp`` takes the gray entries, ``mup`` the paper's k >= 2 rules (section 3.2, Tables 1-5),
``mup_k1`` the k = 1 rules of Appendix B.1 (derived below, next to ``Rule.k1``).
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

PARAMS: tuple[str, ...] = ("sp", "mup", "mup_k1")


@dataclass(frozen=True)
class Ratio:
    """r_n**rn * r_L**rL: the factor a rule puts on its base value."""
    rn: float = 0.0
    rL: float = 0.0

    def __call__(self, r_n: float, r_L: float) -> float:
        return r_n ** self.rn * r_L ** self.rL


BASE = Ratio()  # the base value itself; every gray (SP) entry of lr, weight decay and eps is this


@dataclass(frozen=True)
class Rule:
    """One table entry: the mup value, the gray SP value and, where B.1 changes it, the k = 1 value.

    k = 1 (Appendix B.1): the residual multiplier is alpha_base/sqrt(r_L), so B.1's update condition
    alpha_l ||dW_l||_R = Theta(1/L) asks for ||dW_l||_R = Theta(1/sqrt(L)) where mup has Theta(1):
    every residual-branch update shrinks by 1/sqrt(r_L). Muon, Muon-Kimi, Shampoo, SOAP, SSO, Adam
    and Lion take steps whose size ignores the gradient's scale (Sophia's is bounded by its clip, the
    bound C.9 uses for mup), so their branch lr gets 1/sqrt(r_L) and their weight
    decay (||lambda W|| ~ ||update direction||) is unchanged. Gradients into a branch scale with
    alpha_l, i.e. sqrt(r_L) larger than under mup: SGD's branch lr gets 1/r_L (Table 4's eta*r_L
    becomes eta, the Depth-muP SGD rule), SGD's weight decay (~ gradient) and Adam's eps (~ |grad|)
    get sqrt(r_L). Entries outside the residual branches keep their mup value.
    """
    mup: Ratio
    sp: Ratio = BASE
    k1: Optional[Ratio] = None  # None: same as mup

    def ratio(self, param: str) -> Ratio:
        if param == "sp":
            return self.sp
        if param == "mup_k1" and self.k1 is not None:
            return self.k1
        return self.mup


@dataclass(frozen=True)
class UpdateRules:
    lr: Rule
    weight_decay: Rule
    eps: Optional[Rule] = None  # only Table 5 has an eps row


@dataclass(frozen=True)
class ForwardRules:
    multiplier: Rule
    init_std: Rule  # sqrt of the tables' "Initial Variance" row


# Columns of the tables; LayerNorm gains and biases are vectors like biases and take a bias column:
# the norms inside a block take "hidden biases" (their gradient carries the block's alpha_l, as a
# hidden bias's does), ln_f takes the input-bias rule of "input weights & biases" (outside every
# residual branch, its gradient is Theta(1/n) like an input bias's; B.3 asks ||b||, ||db|| = Theta(1)).
INPUT, HIDDEN, OUTPUT, HIDDEN_BIAS = "input weights & biases", "hidden weights", "output weights", "hidden biases"

# Block-multiplier and initial-variance rows: the same in Tables 1-6. Input variance sigma^2_base
# (language). Hidden biases share the hidden multiplier (Tables 4-5); all biases start at zero (D.3.1).
FORWARD = {
    INPUT: ForwardRules(multiplier=Rule(BASE), init_std=Rule(BASE)),
    HIDDEN: ForwardRules(multiplier=Rule(Ratio(rL=-1), k1=Ratio(rL=-0.5)),  # alpha/r_L; B.1: alpha/sqrt(r_L)
                         init_std=Rule(Ratio(rn=-0.5), sp=Ratio(rn=-0.5))),  # sigma^2/r_n in both
    OUTPUT: ForwardRules(multiplier=Rule(Ratio(rn=-1)),  # alpha/r_n (SP: alpha)
                         init_std=Rule(BASE, sp=Ratio(rn=-0.5))),  # sigma^2 (SP: sigma^2/r_n)
}
FORWARD[HIDDEN_BIAS] = FORWARD[HIDDEN]

KIMI, MUON, SGD, ADAM = "Tables 1-2 (Muon-Kimi)", "Table 3 (Muon)", "Table 4 (SGD)", "Table 5 (AdamW/Lion)"
SHAMPOO, SOAP, SOPHIA, SSO = "Table 3 (Shampoo)", "Table 3 (SOAP)", "Table 5 (Sophia)", "Table 6 (SSO)"

# Learning-rate, weight-decay and eps rows. Tables 4-5 write the depth factor as L (eta*L, lambda/L,
# eps/(L r_n)); we use r_L = L/L_base: Theta(L) = Theta(r_L), so the theory is the same, and only r_L
# keeps the ratio form's promise that at the base shape (r_n = r_L = 1) every mup value is the base
# value, equal to SP's; with L the base model's SGD hidden lr would be 4*eta_base.
RULES: dict[str, dict[str, UpdateRules]] = {
    # Input/output rows of Tables 1-3 and 6 rule the input and output matrices only with
    # matrix_io=true; by default AdamW updates those layers (5.1) under Table 5.
    KIMI: {
        INPUT: UpdateRules(lr=Rule(BASE), weight_decay=Rule(BASE)),
        HIDDEN: UpdateRules(lr=Rule(Ratio(rn=-0.5), k1=Ratio(rn=-0.5, rL=-0.5)),  # eta/sqrt(r_n)
                            weight_decay=Rule(Ratio(rn=0.5))),  # lambda*sqrt(r_n)
        OUTPUT: UpdateRules(lr=Rule(BASE), weight_decay=Rule(BASE)),
    },
    # Table 3's input/output entries are derived for the bare U V^T step (C.2.2), so with matrix_io
    # Muon takes the bare step there: torch's sqrt(max(1, rows/cols)) is width-dependent for them.
    MUON: {
        INPUT: UpdateRules(lr=Rule(Ratio(rn=0.5)), weight_decay=Rule(Ratio(rn=-0.5))),  # eta*sqrt(r_n)
        HIDDEN: UpdateRules(lr=Rule(BASE, k1=Ratio(rL=-0.5)), weight_decay=Rule(BASE)),
        OUTPUT: UpdateRules(lr=Rule(Ratio(rn=0.5)), weight_decay=Rule(Ratio(rn=-0.5))),  # lambda/sqrt(r_n)
    },
    # Table 6: SSO's step R*Phi has ||.||_R = 1 on every layer (C.7, Eq. 35).
    SSO: {
        INPUT: UpdateRules(lr=Rule(BASE), weight_decay=Rule(BASE)),
        HIDDEN: UpdateRules(lr=Rule(BASE, k1=Ratio(rL=-0.5)), weight_decay=Rule(BASE)),
        OUTPUT: UpdateRules(lr=Rule(Ratio(rn=1)), weight_decay=Rule(Ratio(rn=-1))),  # eta*r_n, lambda/r_n
    },
    SGD: {
        INPUT: UpdateRules(lr=Rule(Ratio(rn=1)), weight_decay=Rule(Ratio(rn=-1))),  # eta*r_n, lambda/r_n
        HIDDEN: UpdateRules(lr=Rule(Ratio(rL=1), k1=BASE),  # eta*L -> eta*r_L
                            weight_decay=Rule(Ratio(rL=-1), k1=Ratio(rL=-0.5))),  # lambda/L -> lambda/r_L
        OUTPUT: UpdateRules(lr=Rule(Ratio(rn=1)), weight_decay=Rule(Ratio(rn=-1))),  # eta*r_n, lambda/r_n
        HIDDEN_BIAS: UpdateRules(lr=Rule(Ratio(rn=1, rL=1), k1=Ratio(rn=1)),  # eta*L*r_n -> eta*r_L*r_n
                                 weight_decay=Rule(Ratio(rn=-1, rL=-1), k1=Ratio(rn=-1, rL=-0.5))),
    },
    ADAM: {
        INPUT: UpdateRules(lr=Rule(BASE), weight_decay=Rule(BASE), eps=Rule(Ratio(rn=-1))),  # eps/r_n
        HIDDEN: UpdateRules(lr=Rule(Ratio(rn=-1), k1=Ratio(rn=-1, rL=-0.5)),  # eta/r_n
                            weight_decay=Rule(Ratio(rn=1)),  # lambda*r_n
                            eps=Rule(Ratio(rn=-1, rL=-1), k1=Ratio(rn=-1, rL=-0.5))),  # eps/(L r_n) -> /(r_L r_n)
        OUTPUT: UpdateRules(lr=Rule(BASE), weight_decay=Rule(BASE), eps=Rule(Ratio(rn=-1))),  # eps/r_n
        HIDDEN_BIAS: UpdateRules(lr=Rule(BASE, k1=Ratio(rL=-0.5)), weight_decay=Rule(BASE),
                                 eps=Rule(Ratio(rn=-1, rL=-1), k1=Ratio(rn=-1, rL=-0.5))),  # eps/(L r_n)
    },
}
# Shampoo (C.5) and SOAP (C.6) reduce to Muon's U V^T step: Table 3. SOAP's Adam in the eigenbasis
# has an eps that C.6 drops (the reduction holds without it): it stays eps_base at every size.
# Measured, the real SOAP's hidden update grows with width under this row, as Adam's would
# (tests/test_coord_check.py, docs/trainer.md): the row is kept as the paper states it, so sweeps test the claim.
RULES[SHAMPOO] = RULES[MUON]
RULES[SOAP] = {column: dataclasses.replace(rules, eps=Rule(BASE)) for column, rules in RULES[MUON].items()}
# Sophia's clipped step is bounded like AdamW's (C.9): Table 5, eps included.
RULES[SOPHIA] = RULES[ADAM]


@dataclass(frozen=True)
class Route:
    """Which torch optimizer kind updates a set of parameters, and so which table rules them."""
    update: str  # the torch optimizer kind: a key of trainer.optimizers' builders
    table: str


# Per optimizer: the route of the 2-D hidden matrices, then of everything else. The matrix
# optimizers take the hidden matrices only; AdamW takes the vectors, because matrix optimizers are
# not applied to them (Appendix C), and the embeddings and output layer, as in 5.1 (and Muon's own
# recipe), unless matrix_io=true gives those two matrices to the matrix optimizer too.
ROUTES: dict[str, tuple[Route, Route]] = {
    "muon_kimi": (Route("muon", KIMI), Route("adamw", ADAM)),
    "muon": (Route("muon", MUON), Route("adamw", ADAM)),
    "adamw": (Route("adamw", ADAM), Route("adamw", ADAM)),
    "sgd": (Route("sgd", SGD), Route("sgd", SGD)),
    "lion": (Route("lion", ADAM), Route("lion", ADAM)),
    "shampoo": (Route("shampoo", SHAMPOO), Route("adamw", ADAM)),
    "soap": (Route("soap", SOAP), Route("adamw", ADAM)),
    "sophia": (Route("sophia", SOPHIA), Route("sophia", SOPHIA)),
    "sso": (Route("sso", SSO), Route("adamw", ADAM)),
}
OPTIMIZERS: tuple[str, ...] = tuple(ROUTES)
MATRIX_OPTIMIZERS = tuple(name for name, (hidden, other) in ROUTES.items() if hidden.update != other.update)

# Settings only some optimizers read, and which; None / False (their defaults) mean "not given".
OPTIMIZER_SETTINGS: dict[str, tuple[str, ...]] = {
    "matrix_io": MATRIX_OPTIMIZERS,
    "precondition_frequency": ("shampoo", "soap"),
    "hessian_interval": ("sophia",),
    "sophia_rho": ("sophia",),
}

# What an optimizer-specific setting left at None means: Shampoo's roots every step, as Eq. 32
# (stale roots amplify new gradient directions: rarer roots made training unstable here); SOAP's
# authors' 10 (Vyas et al.); Sophia's authors' k = 10 and gamma = 0.04 (Liu et al.).
DEFAULTS = {("shampoo", "precondition_frequency"): 1, ("soap", "precondition_frequency"): 10,
            ("sophia", "hessian_interval"): 10, ("sophia", "sophia_rho"): 0.04}


def optimizer_setting(cfg: TrainConfig, name: str):
    """An optimizer-only setting as the optimizer runs it: its default where the config leaves it unset."""
    return DEFAULTS[cfg.optimizer, name] if getattr(cfg, name) is None else getattr(cfg, name)


# The update kinds that read a group's eps (Lion has none; Table 5's eps row is AdamW's and Sophia's).
EPS_UPDATES = ("adamw", "soap", "sophia")


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


def check_names(cfg: TrainConfig) -> None:
    """Raises ValueError naming the known choices when cfg.param or cfg.optimizer is unknown, or
    naming the optimizers that take a setting given to another one."""
    _check_param(cfg)
    _check_optimizer(cfg)
    for setting, takers in OPTIMIZER_SETTINGS.items():
        if getattr(cfg, setting) not in (None, False) and cfg.optimizer not in takers:
            raise ValueError(f"{setting}={getattr(cfg, setting)} is a setting of {', '.join(takers)} "
                             f"only, not of optimizer={cfg.optimizer}")


def _check_param(cfg: TrainConfig) -> None:
    if cfg.param not in PARAMS:
        raise ValueError(f"unknown param={cfg.param!r}: choose one of {', '.join(PARAMS)}")


def _check_optimizer(cfg: TrainConfig) -> None:
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer={cfg.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")


def ratios(cfg: TrainConfig) -> tuple[float, float]:
    """(r_n, r_L) of section 4.3."""
    return cfg.width / cfg.base_width, cfg.depth / cfg.base_depth


def multipliers(cfg: TrainConfig) -> Multipliers:
    """alpha of the input layer, of every residual block and of the output layer."""
    _check_param(cfg)
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
    check_names(cfg)
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
