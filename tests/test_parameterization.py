"""The parameterization table against hand-worked values of Tables 1-6, the model it builds,
and the torch optimizers it configures."""
from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch

from trainer.config import TrainConfig
from trainer.model import Multipliers
from trainer.model_factory import meta_model
from trainer.optim.muon import Muon
from trainer.optim.build import OPTIMIZERS, StepInputs, build_optimizers, step_optimizers
from trainer.parameterization import build_model, param_groups
from trainer.rules import MATRIX_OPTIMIZERS, PARAMS

torch.set_num_threads(1)

ETA = 2.0 ** -8  # lr=-8
SIGMA = 0.02
LAMBDA = 0.1  # a nonzero lambda_base so that the weight-decay rules show
EPS = 1e-16
SQRT2 = math.sqrt(2)


def config(**overrides) -> TrainConfig:
    return TrainConfig(**{"lr": -8.0, "weight_decay": LAMBDA, "adam_eps": EPS, "seq_len": 64, **overrides})


def groups_of(cfg: TrainConfig, vocab_size: int = 256) -> dict:
    return {g.name: g for g in param_groups(meta_model(cfg, vocab_size), cfg)}


# Worked by hand from Tables 1-2 (Muon-Kimi on hidden matrices, AdamW under Table 5 on the rest) and
# Table 5 (AdamW), base (256, 4). Sizes: width 1024 depth 16 -> r_n = 4, r_L = 4; width 128 depth 2
# -> r_n = 1/2, r_L = 1/2. Fields: init_std, multiplier, lr, weight_decay, eps (None: not Adam-updated).
HAND = [
    # --- Muon-Kimi, mup, r_n = r_L = 4
    ("muon_kimi", "mup", 1024, 16, "h.*.attn.q.weight",
     (SIGMA / 2,  # sigma^2/r_n -> 0.02/sqrt(4)
      1 / 4,  # alpha/r_L
      ETA / 2,  # eta/sqrt(r_n) = 2^-8/sqrt(4) = 2^-9
      LAMBDA * 2,  # lambda*sqrt(r_n) (Table 2)
      None)),
    ("muon_kimi", "mup", 1024, 16, "wte.weight", (SIGMA, 1.0, ETA, LAMBDA, EPS / 4)),  # eps/r_n (Table 5)
    ("muon_kimi", "mup", 1024, 16, "lm_head.weight", (SIGMA, 1 / 4, ETA, LAMBDA, EPS / 4)),  # alpha/r_n
    ("muon_kimi", "mup", 1024, 16, "h.*.mlp.fc.bias", (None, 1 / 4, ETA, LAMBDA, EPS / 16)),  # eps/(r_L r_n)
    ("muon_kimi", "mup", 1024, 16, "h.*.ln_1.weight", (None, 1 / 4, ETA, LAMBDA, EPS / 16)),  # as hidden bias
    ("muon_kimi", "mup", 1024, 16, "ln_f.bias", (None, 1 / 4, ETA, LAMBDA, EPS / 4)),  # as input bias
    # --- Muon-Kimi, mup, r_n = r_L = 1/2
    ("muon_kimi", "mup", 128, 2, "h.*.mlp.proj.weight",
     (SIGMA * SQRT2,  # 0.02/sqrt(1/2)
      2.0,  # 1/(1/2)
      ETA * SQRT2,  # 2^-8/sqrt(1/2)
      LAMBDA / SQRT2,  # 0.1*sqrt(1/2)
      None)),
    ("muon_kimi", "mup", 128, 2, "lm_head.weight", (SIGMA, 2.0, ETA, LAMBDA, EPS * 2)),  # eps/(1/2)
    ("muon_kimi", "mup", 128, 2, "h.*.attn.v.bias", (None, 2.0, ETA, LAMBDA, EPS * 4)),  # eps/(1/4)
    # --- Muon-Kimi, mup_k1 (B.1): alpha/sqrt(r_L), branch lr / sqrt(r_L), branch eps * sqrt(r_L)
    ("muon_kimi", "mup_k1", 1024, 16, "h.*.attn.q.weight",
     (SIGMA / 2, 1 / 2,  # 1/sqrt(4)
      ETA / 4,  # 2^-8/(sqrt(4)*sqrt(4)) = 2^-10
      LAMBDA * 2, None)),
    ("muon_kimi", "mup_k1", 1024, 16, "h.*.mlp.fc.bias",
     (None, 1 / 2, ETA / 2,  # 2^-8/sqrt(4)
      LAMBDA, EPS / 8)),  # 1e-16/(sqrt(4)*4)
    ("muon_kimi", "mup_k1", 1024, 16, "lm_head.weight", (SIGMA, 1 / 4, ETA, LAMBDA, EPS / 4)),  # unchanged
    ("muon_kimi", "mup_k1", 128, 2, "h.*.attn.k.weight",
     (SIGMA * SQRT2, SQRT2,  # 1/sqrt(1/2)
      ETA * 2,  # 2^-8/(sqrt(1/2)*sqrt(1/2)) = 2^-7
      LAMBDA / SQRT2, None)),
    # --- Muon-Kimi, sp: gray entries; hidden init sigma^2/r_n has no gray alternative
    ("muon_kimi", "sp", 1024, 16, "h.*.attn.q.weight", (SIGMA / 2, 1.0, ETA, LAMBDA, None)),
    ("muon_kimi", "sp", 1024, 16, "lm_head.weight", (SIGMA / 2, 1.0, ETA, LAMBDA, EPS)),  # sigma^2/r_n
    ("muon_kimi", "sp", 128, 2, "h.*.mlp.fc.weight", (SIGMA * SQRT2, 1.0, ETA, LAMBDA, None)),
    # --- AdamW, mup, r_n = r_L = 4
    ("adamw", "mup", 1024, 16, "h.*.attn.q.weight",
     (SIGMA / 2, 1 / 4,
      ETA / 4,  # eta/r_n = 2^-10
      LAMBDA * 4,  # lambda*r_n
      EPS / 16)),  # eps/(r_L r_n) = 1e-16/16
    ("adamw", "mup", 1024, 16, "wpe.weight", (SIGMA, 1.0, ETA, LAMBDA, EPS / 4)),
    ("adamw", "mup", 1024, 16, "lm_head.weight", (SIGMA, 1 / 4, ETA, LAMBDA, EPS / 4)),
    ("adamw", "mup", 1024, 16, "h.*.attn.proj.bias", (None, 1 / 4, ETA, LAMBDA, EPS / 16)),
    # --- AdamW, mup, r_n = r_L = 1/2
    ("adamw", "mup", 128, 2, "h.*.mlp.fc.weight",
     (SIGMA * SQRT2, 2.0,
      ETA * 2,  # 2^-8/(1/2) = 2^-7
      LAMBDA / 2,  # 0.1*(1/2)
      EPS * 4)),  # 1e-16/(1/4)
    ("adamw", "mup", 128, 2, "wte.weight", (SIGMA, 1.0, ETA, LAMBDA, EPS * 2)),
    # --- AdamW, mup_k1
    ("adamw", "mup_k1", 1024, 16, "h.*.attn.q.weight",
     (SIGMA / 2, 1 / 2,
      ETA / 8,  # 2^-8/(4*sqrt(4)) = 2^-11
      LAMBDA * 4,
      EPS / 8)),  # 1e-16/(sqrt(4)*4)
    ("adamw", "mup_k1", 1024, 16, "h.*.ln_2.bias", (None, 1 / 2, ETA / 2, LAMBDA, EPS / 8)),
    ("adamw", "mup_k1", 128, 2, "h.*.attn.q.weight",
     (SIGMA * SQRT2, SQRT2,
      ETA * 2 * SQRT2,  # 2^-8/((1/2)*sqrt(1/2))
      LAMBDA / 2,
      EPS * 2 * SQRT2)),  # 1e-16/((1/2)*sqrt(1/2))
    # --- AdamW, sp
    ("adamw", "sp", 1024, 16, "h.*.attn.q.weight", (SIGMA / 2, 1.0, ETA, LAMBDA, EPS)),
    ("adamw", "sp", 1024, 16, "lm_head.weight", (SIGMA / 2, 1.0, ETA, LAMBDA, EPS)),
    ("adamw", "sp", 128, 2, "h.*.mlp.fc.bias", (None, 1.0, ETA, LAMBDA, EPS)),
    # --- Table 4 (SGD) with r_L for L, Table 3 (Muon) and Lion (Table 5, no eps), r_n = r_L = 4
    ("sgd", "mup", 1024, 16, "h.*.attn.q.weight", (SIGMA / 2, 1 / 4, ETA * 4, LAMBDA / 4, None)),  # eta*r_L
    ("sgd", "mup", 1024, 16, "h.*.mlp.fc.bias", (None, 1 / 4, ETA * 16, LAMBDA / 16, None)),  # eta*r_L*r_n
    ("sgd", "mup", 1024, 16, "wte.weight", (SIGMA, 1.0, ETA * 4, LAMBDA / 4, None)),  # eta*r_n
    ("sgd", "mup_k1", 1024, 16, "h.*.attn.q.weight", (SIGMA / 2, 1 / 2, ETA, LAMBDA / 2, None)),  # eta; lambda/sqrt(r_L)
    ("sgd", "mup_k1", 1024, 16, "h.*.mlp.fc.bias", (None, 1 / 2, ETA * 4, LAMBDA / 8, None)),  # eta*r_n; lambda/(sqrt(r_L) r_n)
    ("muon", "mup", 1024, 16, "h.*.attn.q.weight", (SIGMA / 2, 1 / 4, ETA, LAMBDA, None)),
    ("muon", "mup_k1", 1024, 16, "h.*.attn.q.weight", (SIGMA / 2, 1 / 2, ETA / 2, LAMBDA, None)),
    ("lion", "mup", 1024, 16, "h.*.attn.q.weight", (SIGMA / 2, 1 / 4, ETA / 4, LAMBDA * 4, None)),
    # --- Shampoo and SOAP: Table 3 (Muon's) on hidden matrices, AdamW (Table 5) elsewhere; SOAP's
    # own eps stays eps_base (C.6 drops it). r_n = r_L = 4.
    ("shampoo", "mup", 1024, 16, "h.*.attn.q.weight", (SIGMA / 2, 1 / 4, ETA, LAMBDA, None)),  # eta, lambda
    ("shampoo", "mup", 1024, 16, "wte.weight", (SIGMA, 1.0, ETA, LAMBDA, EPS / 4)),  # AdamW, eps/r_n
    ("shampoo", "mup_k1", 1024, 16, "h.*.mlp.fc.weight", (SIGMA / 2, 1 / 2, ETA / 2, LAMBDA, None)),  # eta/sqrt(r_L)
    ("shampoo", "sp", 1024, 16, "h.*.attn.q.weight", (SIGMA / 2, 1.0, ETA, LAMBDA, None)),
    ("soap", "mup", 1024, 16, "h.*.mlp.proj.weight", (SIGMA / 2, 1 / 4, ETA, LAMBDA, EPS)),
    ("soap", "mup", 1024, 16, "h.*.mlp.proj.bias", (None, 1 / 4, ETA, LAMBDA, EPS / 16)),  # AdamW, eps/(r_L r_n)
    ("soap", "mup_k1", 1024, 16, "h.*.attn.v.weight", (SIGMA / 2, 1 / 2, ETA / 2, LAMBDA, EPS)),
    ("soap", "sp", 1024, 16, "h.*.attn.v.weight", (SIGMA / 2, 1.0, ETA, LAMBDA, EPS)),
    # --- Sophia: Table 5 (AdamW's) on every group, eps included
    ("sophia", "mup", 1024, 16, "h.*.attn.q.weight", (SIGMA / 2, 1 / 4, ETA / 4, LAMBDA * 4, EPS / 16)),
    ("sophia", "mup", 1024, 16, "wte.weight", (SIGMA, 1.0, ETA, LAMBDA, EPS / 4)),
    ("sophia", "mup", 1024, 16, "lm_head.weight", (SIGMA, 1 / 4, ETA, LAMBDA, EPS / 4)),
    ("sophia", "mup", 1024, 16, "h.*.mlp.fc.bias", (None, 1 / 4, ETA, LAMBDA, EPS / 16)),
    ("sophia", "mup_k1", 1024, 16, "h.*.attn.q.weight", (SIGMA / 2, 1 / 2, ETA / 8, LAMBDA * 4, EPS / 8)),
    ("sophia", "sp", 1024, 16, "h.*.attn.q.weight", (SIGMA / 2, 1.0, ETA, LAMBDA, EPS)),
    ("sophia", "sp", 1024, 16, "lm_head.weight", (SIGMA / 2, 1.0, ETA, LAMBDA, EPS)),
    # --- SSO: Table 6 on hidden matrices (eta, lambda), AdamW elsewhere
    ("sso", "mup", 1024, 16, "h.*.attn.k.weight", (SIGMA / 2, 1 / 4, ETA, LAMBDA, None)),
    ("sso", "mup", 1024, 16, "lm_head.weight", (SIGMA, 1 / 4, ETA, LAMBDA, EPS / 4)),  # AdamW
    ("sso", "mup_k1", 1024, 16, "h.*.attn.k.weight", (SIGMA / 2, 1 / 2, ETA / 2, LAMBDA, None)),
    ("sso", "sp", 1024, 16, "h.*.attn.k.weight", (SIGMA / 2, 1.0, ETA, LAMBDA, None)),
]

# matrix_io=true: the matrix optimizer takes the input and output weights with its table's rows,
# r_n = r_L = 4. Table 3: eta*sqrt(r_n) = 2*eta, lambda/sqrt(r_n); Tables 1-2: eta, lambda;
# Table 6: input eta, lambda, output eta*r_n, lambda/r_n. Outside the residual branches, so k = 1
# keeps the mup values; SP takes the gray base values.
HAND_MATRIX_IO = [
    ("muon", "mup", "wte.weight", (SIGMA, 1.0, ETA * 2, LAMBDA / 2, None)),
    ("muon", "mup", "lm_head.weight", (SIGMA, 1 / 4, ETA * 2, LAMBDA / 2, None)),
    ("muon", "mup_k1", "wpe.weight", (SIGMA, 1.0, ETA * 2, LAMBDA / 2, None)),
    ("muon", "sp", "lm_head.weight", (SIGMA / 2, 1.0, ETA, LAMBDA, None)),
    ("muon_kimi", "mup", "lm_head.weight", (SIGMA, 1 / 4, ETA, LAMBDA, None)),
    ("muon_kimi", "sp", "wte.weight", (SIGMA, 1.0, ETA, LAMBDA, None)),
    ("shampoo", "mup", "lm_head.weight", (SIGMA, 1 / 4, ETA * 2, LAMBDA / 2, None)),
    ("shampoo", "mup_k1", "wte.weight", (SIGMA, 1.0, ETA * 2, LAMBDA / 2, None)),
    ("shampoo", "sp", "wte.weight", (SIGMA, 1.0, ETA, LAMBDA, None)),
    ("soap", "mup", "wte.weight", (SIGMA, 1.0, ETA * 2, LAMBDA / 2, EPS)),
    ("soap", "sp", "lm_head.weight", (SIGMA / 2, 1.0, ETA, LAMBDA, EPS)),
    ("sso", "mup", "wte.weight", (SIGMA, 1.0, ETA, LAMBDA, None)),
    ("sso", "mup", "lm_head.weight", (SIGMA, 1 / 4, ETA * 4, LAMBDA / 4, None)),
    ("sso", "mup_k1", "lm_head.weight", (SIGMA, 1 / 4, ETA * 4, LAMBDA / 4, None)),
    ("sso", "sp", "lm_head.weight", (SIGMA / 2, 1.0, ETA, LAMBDA, None)),
]


@pytest.mark.parametrize("optimizer,param,width,depth,name,expected", HAND,
                         ids=[f"{o}-{p}-{w}x{d}-{n}" for o, p, w, d, n, _ in HAND])
def test_rules_match_hand_worked_tables(optimizer, param, width, depth, name, expected):
    group = groups_of(config(optimizer=optimizer, param=param, width=width, depth=depth))[name]
    init_std, multiplier, lr, weight_decay, eps = expected
    got = (group.init_std, group.multiplier, group.lr, group.weight_decay, group.eps)
    assert same(got, (init_std, multiplier, lr, weight_decay, eps)), got


@pytest.mark.parametrize("optimizer,param,name,expected", HAND_MATRIX_IO,
                         ids=[f"{o}-{p}-{n}" for o, p, n, _ in HAND_MATRIX_IO])
def test_matrix_io_rules_match_hand_worked_tables(optimizer, param, name, expected):
    groups = groups_of(config(optimizer=optimizer, param=param, width=1024, depth=16, matrix_io=True))
    group = groups[name]
    assert same((group.init_std, group.multiplier, group.lr, group.weight_decay, group.eps), expected)
    assert group.update == groups["h.*.attn.q.weight"].update != "adamw"
    assert groups["h.*.attn.q.bias"].update == "adamw"  # vectors stay AdamW's (Appendix C)


def same(got, expected) -> bool:
    """Equal up to float rounding, None only where None is expected."""
    return all(g is e if e is None else g is not None and math.isclose(g, e, rel_tol=1e-12)
               for g, e in zip(got, expected, strict=True))


@pytest.mark.parametrize("optimizer,matrix_io", [(o, False) for o in OPTIMIZERS] + [(o, True) for o in MATRIX_OPTIMIZERS])
def test_at_the_base_shape_every_parameterization_is_sp(optimizer, matrix_io):
    # The ratio form (4.3): at r_n = r_L = 1 the base values are the true ones, under every rule.
    base = config(optimizer=optimizer, width=256, depth=4, param="sp", matrix_io=matrix_io)
    sp = groups_of(base)
    for param in ("mup", "mup_k1"):
        other = groups_of(config(optimizer=optimizer, width=256, depth=4, param=param, matrix_io=matrix_io))
        for name, group in sp.items():
            fields = ("init_std", "multiplier", "lr", "weight_decay", "eps")
            assert same([getattr(other[name], f) for f in fields], [getattr(group, f) for f in fields]), name
            assert other[name].update == group.update


def test_roles_tables_and_update_kinds():
    groups = groups_of(config(optimizer="muon_kimi", param="mup", width=512, depth=8))
    roles = {name: g.role for name, g in groups.items()}
    assert roles["wte.weight"] == roles["wpe.weight"] == "input"
    assert roles["lm_head.weight"] == "output"
    assert {roles[f"h.*.{m}.weight"] for m in ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc", "mlp.proj")} == {"hidden"}
    assert roles["h.*.mlp.proj.bias"] == "hidden bias"
    assert roles["h.*.ln_1.weight"] == roles["ln_f.bias"] == "norm"
    assert {g.update for g in groups.values() if g.role == "hidden"} == {"muon"}
    assert {g.update for g in groups.values() if g.role != "hidden"} == {"adamw"}
    assert groups["h.*.attn.q.weight"].table.startswith("Tables 1-2 (Muon-Kimi), hidden weights")
    assert groups["h.*.attn.q.bias"].table.startswith("Table 5 (AdamW/Lion), hidden biases")
    assert "B.1" in groups_of(config(param="mup_k1"))["h.*.attn.q.weight"].table
    assert {g.init for g in groups.values()} == {"normal", "zeros", "ones"}


@pytest.mark.parametrize("layernorm", [True, False])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_parameter_lands_in_exactly_one_group(optimizer, layernorm):
    cfg = config(optimizer=optimizer, width=128, depth=3, layernorm=layernorm)
    model = build_model(cfg, 64)
    groups = param_groups(model, cfg)
    grouped = [id(p) for g in groups for p in g.params]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    assert len({g.name for g in groups}) == len(groups)
    for g in groups:
        assert all(tuple(p.shape) == g.shape for p in g.params)
        assert len(g.params) == (3 if g.name.startswith("h.*.") else 1)
    assert any(g.role == "norm" for g in groups) == layernorm


@pytest.mark.parametrize("param,block,output", [
    ("sp", 1.0, 1.0),
    ("mup", 1 / 4, 1 / 4),  # alpha/r_L, alpha/r_n with r_n = 128/32, r_L = 8/2
    ("mup_k1", 1 / 2, 1 / 4),  # alpha/sqrt(r_L)
])
def test_forward_multipliers_reach_the_model(param, block, output):
    cfg = config(param=param, width=128, depth=8, base_width=32, base_depth=2)
    model = build_model(cfg, 64)
    assert model.multipliers == Multipliers(input=1.0, block=block, output=output)
    assert [b.multiplier for b in model.h] == pytest.approx([block] * 8)


@pytest.mark.parametrize("param", ["sp", "mup"])
def test_initial_std_measured_on_a_model_matches_the_table(param):
    cfg = config(param=param, width=256, depth=2, base_width=64, seq_len=256)  # r_n = 4
    model = build_model(cfg, 512, torch.Generator().manual_seed(0))
    expected_output_std = SIGMA if param == "mup" else SIGMA / 2  # sigma^2 vs gray sigma^2/r_n
    for g in param_groups(model, cfg):
        values = torch.cat([p.detach().flatten() for p in g.params])
        if g.init == "normal":
            # >= 65k samples each: the std's sampling error is below 0.3%, its mean's below 0.01 std
            assert values.std().item() == pytest.approx(g.init_std, rel=0.02), g.name
            assert abs(values.mean().item()) < 0.02 * g.init_std, g.name
        else:
            assert torch.equal(values, torch.full_like(values, 1.0 if g.init == "ones" else 0.0)), g.name
    assert model.lm_head.weight.std().item() == pytest.approx(expected_output_std, rel=0.02)
    assert model.h[0].attn.q.weight.std().item() == pytest.approx(SIGMA / 2, rel=0.02)  # sigma^2/r_n


def test_same_generator_seed_gives_the_same_model():
    cfg = config(width=64, depth=2)
    a, b = (build_model(cfg, 64, torch.Generator().manual_seed(3)) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_torch_param_groups_carry_the_table_values(optimizer):
    cfg = config(optimizer=optimizer, param="mup", width=128, depth=2)
    model = build_model(cfg, 64)
    groups = {g.name: g for g in param_groups(model, cfg)}
    optimizers = build_optimizers(list(groups.values()), cfg)
    seen = []
    for opt in optimizers:
        for torch_group in opt.param_groups:
            group = groups[torch_group["name"]]
            assert [id(p) for p in torch_group["params"]] == [id(p) for p in group.params]
            assert torch_group["lr"] == group.lr and torch_group["weight_decay"] == group.weight_decay
            if group.eps is not None:
                assert torch_group["eps"] == group.eps
            seen += [id(p) for p in torch_group["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    kinds = {"muon_kimi": {"Muon", "AdamW"}, "muon": {"Muon", "AdamW"}, "adamw": {"AdamW"},
             "sgd": {"SGD"}, "lion": {"Lion"}, "shampoo": {"Shampoo", "AdamW"}, "soap": {"SOAP", "AdamW"},
             "sophia": {"Sophia"}, "sso": {"SSO", "AdamW"}}[optimizer]
    assert {type(o).__name__ for o in optimizers} == kinds


def test_muon_kimi_gives_muon_exactly_the_hidden_matrices():
    cfg = config(optimizer="muon_kimi", weight_decay=0.0, width=128, depth=2)
    model = build_model(cfg, 64)
    optimizers = build_optimizers(param_groups(model, cfg), cfg)
    (muon,) = [o for o in optimizers if isinstance(o, Muon)]
    (adamw,) = [o for o in optimizers if isinstance(o, torch.optim.AdamW)]
    assert len(optimizers) == 2
    hidden = {id(p) for name, p in model.named_parameters() if name.startswith("h.") and p.ndim == 2}
    in_muon = [p for g in muon.param_groups for p in g["params"]]
    assert {id(p) for p in in_muon} == hidden and len(in_muon) == 2 * 6
    for g in muon.param_groups:
        # torch's Muon default weight decay is 0.1; the paper trains without (lambda_base = 0)
        assert g["adjust_lr_fn"] == "match_rms_adamw" and g["weight_decay"] == 0.0
        assert g["momentum"] == 0.95 and g["nesterov"]
    assert all(tuple(g["betas"]) == (0.9, 0.95) for g in adamw.param_groups)
    plain = build_optimizers(param_groups(model, config(optimizer="muon")), config(optimizer="muon"))
    assert {g["adjust_lr_fn"] for o in plain if isinstance(o, Muon) for g in o.param_groups} == {"original"}
    # matrix_io: Table 3's input/output rows are for the bare U V^T step (C.2.2)
    io = config(optimizer="muon", matrix_io=True)
    (muon,) = [o for o in build_optimizers(param_groups(model, io), io) if isinstance(o, Muon)]
    assert {g["name"]: g["adjust_lr_fn"] for g in muon.param_groups if not g["name"].startswith("h.")} == {
        "wte.weight": "bare", "wpe.weight": "bare", "lm_head.weight": "bare"}


def test_unknown_names_list_the_known_ones():
    # the config checks the names itself (trainer.rules, torch-free), with the closest known name
    with pytest.raises(ValueError, match="param='spp': did you mean 'sp'.*sp, mup, mup_k1"):
        config(param="spp").validate()
    every = "muon_kimi, muon, adamw, sgd, lion, shampoo, soap, sophia, sso"
    with pytest.raises(ValueError, match=f"optimizer='adamz': did you mean 'adamw'.*{every}"):
        config(optimizer="adamz").validate()
    with pytest.raises(ValueError, match=f"optimizer='qqq': choose one of {every}"):
        config(optimizer="qqq").validate()
    config().validate()
    assert PARAMS == ("sp", "mup", "mup_k1")


@pytest.mark.parametrize("optimizer,lr", [("muon_kimi", -6), ("muon", -5), ("adamw", -8), ("lion", -8), ("sgd", -4),
                                          ("shampoo", -6), ("soap", -8), ("sophia", -8), ("sso", -4)])
def test_a_few_steps_reduce_the_loss(optimizer, lr):
    cfg = config(optimizer=optimizer, lr=lr, weight_decay=0.0, width=64, depth=2, base_width=64,
                 base_depth=2, seq_len=16)
    model = build_model(cfg, 64, torch.Generator().manual_seed(0))
    optimizers = build_optimizers(param_groups(model, cfg), cfg)
    tokens = torch.randint(0, 64, (8, 17), generator=torch.Generator().manual_seed(1))
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    losses = []
    for _ in range(10):
        loss = model.loss(x, y)
        loss.backward()
        step_optimizers(optimizers, StepInputs(model, x, nullcontext))
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses
