"""The paper's parameterization rules as one table of data, and the registry of parameterizations and
optimizers: which names exist, which table rules each, which settings each takes. Torch-free, so
that ``TrainConfig.validate`` checks names where every other setting is checked, and the sweeper can
read it without torch. trainer.parameterization applies the table to a model.

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
import difflib
from dataclasses import dataclass
from typing import Any, Mapping, Optional

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
    update: str  # the torch optimizer kind: a key of trainer.optim.build' builders
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


# The update kinds that read a group's eps (Lion has none; Table 5's eps row is AdamW's and Sophia's).
EPS_UPDATES = ("adamw", "soap", "sophia")


def _unknown(kind: str, name: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown {kind}={name!r}: {hint}choose one of {', '.join(known)}"


def check_names(values: Mapping[str, Any]) -> None:
    """Raises ValueError naming the known choices (and the closest) when a config's param or
    optimizer is unknown, or naming the optimizers that take a setting given to another one.
    ``values``: a config's settings (TrainConfig.to_dict())."""
    if values["param"] not in PARAMS:
        raise ValueError(_unknown("param", values["param"], PARAMS))
    optimizer = values["optimizer"]
    if optimizer not in OPTIMIZERS:
        raise ValueError(_unknown("optimizer", optimizer, OPTIMIZERS))
    for setting, takers in OPTIMIZER_SETTINGS.items():
        if values[setting] not in (None, False) and optimizer not in takers:
            raise ValueError(f"{setting}={values[setting]} is a setting of {', '.join(takers)} "
                             f"only, not of optimizer={optimizer}")

