"""A user's model through the factory seam (model=package.module:factory): roles inferred from shapes
on the project's GPT-2 (the rules of before the seam), a Hugging Face Llama and GPT-NeoX, ambiguous
roles and their override, explain against hand-worked values, the coordinate check, the cell key,
and a sweep of the Llama that trains, resumes and reports."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from sweeper.store.schema import cell_key
from sweeper.store.index import load_store
from sweeper.store.records import records_dir
from trainer.cli import load_config
from trainer.config import TrainConfig
from trainer.coord_check import D2, coord_check
from trainer.coord_verdict import verdicts
from trainer.explain import main as explain_main
from trainer.model import GPT
from trainer.model_factory import meta_model
from trainer.parameterization import build_model, model_layout, param_groups
from trainer.roles import AmbiguousRoles
from trainer.rules import HIDDEN, HIDDEN_BIAS, INPUT, OUTPUT

pytest.importorskip("transformers")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
LLAMA, NEOX = "trainer.hf_models:llama", "trainer.hf_models:gpt_neox"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def hand_listed_place(model: GPT, module_name: str, module: nn.Module, param_name: str) -> tuple:
    """GPT-2's roles as they were hand-listed before the seam (trainer.parameterization._place of
    457a0e0): (role, column, position, init)."""
    in_block = module_name.startswith("h.")
    if isinstance(module, nn.Embedding):
        return "input", INPUT, "input", "normal"
    if isinstance(module, nn.LayerNorm):
        init = "ones" if param_name == "weight" else "zeros"
        return ("norm", HIDDEN_BIAS, "block", init) if in_block else ("norm", INPUT, "output", init)
    if isinstance(module, nn.Linear) and module is model.lm_head and param_name == "weight":
        return "output", OUTPUT, "output", "normal"
    assert isinstance(module, nn.Linear) and in_block
    return ("hidden", HIDDEN, "block", "normal") if param_name == "weight" else ("hidden bias", HIDDEN_BIAS, "block", "zeros")


@pytest.mark.parametrize("overrides", [
    dict(width=128, depth=3), dict(width=64, depth=1, layernorm=False), dict(width=32, depth=2, head_dim=16),
])
def test_role_inference_on_the_projects_gpt2_gives_the_hand_listed_roles_and_groups(overrides):
    cfg = TrainConfig(**overrides)
    model = meta_model(cfg, 256)
    assert isinstance(model, GPT)
    layout = model_layout(cfg)
    assert layout.ambiguous == {} and layout.heads == ["lm_head"]
    assert layout.blocks == [f"h.{i}" for i in range(cfg.depth)]
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}"
            group, place = layout.places[full]
            assert group == full.replace(full.split(".")[1], "*", 1) if full.startswith("h.") else group == full
            assert dataclasses.astuple(place) == hand_listed_place(model, module_name, module, param_name), full


LLAMA_ROLES = {  # by hand from LlamaForCausalLM's layout
    "lm.model.embed_tokens.weight": "input",
    **{f"lm.model.layers.*.self_attn.{m}_proj.weight": "hidden" for m in "qkvo"},
    **{f"lm.model.layers.*.mlp.{m}_proj.weight": "hidden" for m in ("gate", "up", "down")},
    "lm.model.layers.*.input_layernorm.weight": "norm", "lm.model.layers.*.post_attention_layernorm.weight": "norm",
    "lm.model.norm.weight": "norm", "lm.lm_head.weight": "output",
}


def llama_config(**overrides) -> TrainConfig:
    return TrainConfig(**{"model": LLAMA, "width": 32, "depth": 2, "head_dim": 16, "base_width": 16,
                          "base_depth": 1, "seq_len": 32, **overrides})


def test_the_transformers_llamas_roles_match_the_hand_written_expectation():
    cfg = llama_config()
    groups = param_groups(meta_model(cfg, 256), cfg)
    assert {g.name: g.role for g in groups} == LLAMA_ROLES
    layout = model_layout(cfg)
    assert layout.blocks == ["lm.model.layers.0", "lm.model.layers.1"] and layout.heads == ["lm.lm_head"]
    assert {g.name: g.init for g in groups if g.role == "norm"} == dict.fromkeys(
        [n for n, role in LLAMA_ROLES.items() if role == "norm"], "ones")


def test_tied_embeddings_are_an_error_naming_both_and_a_pattern_resolves_them():
    tied = llama_config(model_args={"tie_word_embeddings": True})
    with pytest.raises(AmbiguousRoles, match=r"lm\.model\.embed_tokens\.weight.*lm\.lm_head\.weight \(tied\)") as err:
        build_model(tied, 256)
    assert "model_roles=" in str(err.value)
    resolved = dataclasses.replace(tied, model_roles={"embed_tokens.weight": "input"})
    model = build_model(resolved, 256, torch.Generator().manual_seed(0))
    (group,) = [g for g in param_groups(model, resolved) if g.params[0] is model.lm.lm_head.weight]
    assert group.role == "input" and group.name == "lm.model.embed_tokens.weight"
    # the output multiplier still scales the (tied) output layer: 1/r_n = 1/2
    x = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        scaled = model(x)
        hidden = model.lm.model(input_ids=x).last_hidden_state
    torch.testing.assert_close(scaled, 0.5 * hidden @ model.lm.lm_head.weight.T)


class Gated(nn.Module):
    """A block with a learned scalar gate, which no shape can place."""

    def __init__(self, width: int):
        super().__init__()
        self.mlp = nn.Linear(width, width)
        self.gate = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x + self.gate * self.mlp(x)


class GatedLM(nn.Module):
    def __init__(self, width: int, depth: int, vocab_size: int, seq_len: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList(Gated(width) for _ in range(depth))
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_a_scalar_gate_is_an_error_naming_it_and_explain_flags_it(capsys):
    args = [f"model={__name__}:GatedLM", "width=32", "depth=2"]
    assert explain_main(args) == 2
    out, err = capsys.readouterr()
    assert "blocks.*.mlp.weight" in out and "ambiguous" in out
    assert "blocks.0.gate" in err and "does not grow with width" in err
    assert explain_main(args + ["model_roles={gate:hidden bias}"]) == 0
    assert re.search(r"^blocks\.\*\.gate +hidden bias ", capsys.readouterr().out, re.M)


class Marked(nn.Linear):
    residual_branch = True  # the one-line marker (trainer.hooks)


class OddLM(nn.Module):
    """Blocks whose one branch has no usual name ("mix"), marked or not."""

    def __init__(self, width: int, depth: int, vocab_size: int, seq_len: int, marked: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList(nn.ModuleDict({"mix": (Marked if marked else nn.Linear)(width, width)})
                                    for _ in range(depth))
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = x + block["mix"](x)
        return self.head(x)


@pytest.mark.parametrize("how", [{"model_branches": "blocks.*.mix"}, {"model_args": {"marked": True}}])
def test_a_branch_without_a_usual_name_is_an_error_until_a_pattern_or_the_marker_names_it(how):
    cfg = TrainConfig(model=f"{__name__}:OddLM", width=32, depth=4, base_width=16, base_depth=2)  # alpha 1/2
    with pytest.raises(ValueError, match=r"block blocks\.0 has no residual branch .*children: blocks\.0\.mix"):
        build_model(cfg, 64)
    model = build_model(dataclasses.replace(cfg, **how), 64, torch.Generator().manual_seed(0))
    mix = model.blocks[0]["mix"]
    x = torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(mix(x), 0.5 * nn.functional.linear(x, mix.weight, mix.bias))


def rows(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "trainer.explain", *args, "--json"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {row["name"]: row for row in json.loads(done.stdout)}


ETA, SIGMA = 2.0 ** -8, 0.02


def test_explain_matches_hand_worked_values_for_two_parameters_of_each_role():
    # Llama, Muon-Kimi (Tables 1-2 on hidden matrices, Table 5 for the rest), r_n = 4, r_L = 2:
    # hidden: sigma/sqrt(r_n), alpha/r_L, eta/sqrt(r_n); input: sigma, 1, eta, eps/r_n; output:
    # sigma, alpha/r_n; norm in a block: hidden bias (alpha/r_L, eps/(r_L r_n)); final norm: input bias.
    got = rows(f"model={LLAMA}", "width=64", "depth=4", "base_width=16", "base_depth=2", "head_dim=16")
    hand = {
        "lm.model.layers.*.self_attn.q_proj.weight": ("hidden", SIGMA / 2, 0.5, ETA / 2, None),
        "lm.model.layers.*.mlp.down_proj.weight": ("hidden", SIGMA / 2, 0.5, ETA / 2, None),
        "lm.model.embed_tokens.weight": ("input", SIGMA, 1.0, ETA, 1e-16 / 4),
        "lm.lm_head.weight": ("output", SIGMA, 0.25, ETA, 1e-16 / 4),
        "lm.model.layers.*.input_layernorm.weight": ("norm", None, 0.5, ETA, 1e-16 / 8),
        "lm.model.norm.weight": ("norm", None, 0.25, ETA, 1e-16 / 4),
    }
    # GPT-NeoX, AdamW (Table 5 everywhere), mup_k1, r_n = 2, r_L = 4: hidden eta/r_n and
    # eps/(sqrt(r_L) r_n) with alpha/sqrt(r_L); hidden biases eta/sqrt(r_L).
    neox = rows(f"model={NEOX}", "width=32", "depth=8", "base_width=16", "base_depth=2", "head_dim=16",
                "optimizer=adamw", "param=mup_k1")
    neox_hand = {
        "lm.gpt_neox.layers.*.attention.query_key_value.weight": ("hidden", SIGMA / math.sqrt(2), 0.5, ETA / 2 / 2, 1e-16 / 4),
        "lm.gpt_neox.layers.*.mlp.dense_4h_to_h.weight": ("hidden", SIGMA / math.sqrt(2), 0.5, ETA / 2 / 2, 1e-16 / 4),
        "lm.gpt_neox.layers.*.attention.dense.bias": ("hidden bias", None, 0.5, ETA / 2, 1e-16 / 4),
        "lm.gpt_neox.layers.*.mlp.dense_h_to_4h.bias": ("hidden bias", None, 0.5, ETA / 2, 1e-16 / 4),
        "lm.gpt_neox.embed_in.weight": ("input", SIGMA, 1.0, ETA, 1e-16 / 2),
        "lm.lm_head.weight": ("output", SIGMA, 0.5, ETA, 1e-16 / 2),
        "lm.gpt_neox.layers.*.post_attention_layernorm.bias": ("norm", None, 0.5, ETA / 2, 1e-16 / 4),
        "lm.gpt_neox.final_layer_norm.weight": ("norm", None, 0.5, ETA, 1e-16 / 2),
    }
    for table, expected in ((got, hand), (neox, neox_hand)):
        for name, values in expected.items():
            row = table[name]
            assert (row["role"], row["init_std"], row["multiplier"], row["lr"], row["eps"]) == pytest.approx(values), name
    assert {row["role"] for row in got.values()} == {"input", "hidden", "norm", "output"}
    assert {row["role"] for row in neox.values()} == {"input", "hidden", "hidden bias", "norm", "output"}


def test_the_block_and_output_multipliers_are_hooked_on_the_llamas_branches_and_head():
    cfg = llama_config(width=64, depth=4, base_width=16, base_depth=2)  # alpha_block 1/2, alpha_out 1/4
    model = build_model(cfg, 256, torch.Generator().manual_seed(0))
    plain = build_model(dataclasses.replace(cfg, param="sp"), 256)  # SP: every multiplier 1
    plain.load_state_dict(model.state_dict())
    layer, plain_layer = model.lm.model.layers[0], plain.lm.model.layers[0]
    x = torch.randn(2, 8, 64)
    with torch.no_grad():
        torch.testing.assert_close(layer.mlp(x), 0.5 * plain_layer.mlp(x))
        head = torch.randn(2, 8, 64)
        torch.testing.assert_close(model.lm.lm_head(head), 0.25 * plain.lm.lm_head(head))


WIDTHS, DEPTHS = [32, 64, 128], [2, 4, 8]


@pytest.mark.parametrize("param, expected", [("mup", "flat"), ("sp", "not flat")])
def test_the_llamas_coordinate_check_is_flat_under_mup_and_grows_under_sp(tmp_path, param, expected):
    overrides = {**D2, "model": LLAMA, "base_width": 32, "base_depth": 2, "head_dim": 16, "seq_len": 32,
                 "threads": 1, "data_dir": tmp_path}
    base = load_config([f"{k}={v}" for k, v in overrides.items()])
    (found,) = verdicts(coord_check(base, WIDTHS, DEPTHS, [param], seeds=[0]))
    assert {axis for axis, _ in found.slopes} == {"width", "depth"}
    assert found.verdict == expected, found.slopes


def test_the_model_and_its_arguments_enter_the_key_only_away_from_the_default_gpt2():
    gpt2 = TrainConfig().to_dict()
    before = {k: v for k, v in gpt2.items() if not k.startswith("model")}  # a config of before the seam
    assert cell_key(gpt2) == cell_key(before) == cell_key({**gpt2, "model_args": {}})
    llama = cell_key({**gpt2, "model": LLAMA})
    assert len({cell_key(gpt2), llama, cell_key({**gpt2, "model": LLAMA, "model_args": {"mlp_ratio": 3}}),
                cell_key({**gpt2, "model": LLAMA, "model_roles": {"norm.weight": "norm"}})}) == 4


def sweep(args, cwd, **popen):
    return subprocess.Popen([sys.executable, str(REPO / "sweep.py"), *args], cwd=cwd, env=ENV, **popen)


def test_a_sweep_on_the_llama_trains_resumes_and_reports(tmp_path):
    store = tmp_path / "store"
    # lr below the optimum (near -7 here): every row ends at the grid's edge, so answer asks for more
    args = ["-m", "experiment=smoke", f"model={LLAMA}", "model_args={mlp_ratio:2}", "head_dim=16", "base_width=32", "width=32,64",
            "lr=-11:-9", "steps=20", "checkpoint_interval=5", "jobs=2", f"store={store}"]
    proc = sweep(args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(list(records_dir(store).glob("*.json"))) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "the sweep wrote no records"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = len(list(records_dir(store).glob("*.json")))
    assert 2 <= before < 6, "kill came too late to test a resume"
    resumed = subprocess.run([sys.executable, str(REPO / "sweep.py"), *args], cwd=tmp_path, env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"skipping {before} of 6 cells already in the store" in resumed.stdout
    frame = load_store(store)
    assert len(frame) == 6 and set(frame["status"]) == {"ok"} and set(frame["model"]) == {LLAMA}
    assert set(frame["model_args"]) == {'{"mlp_ratio": 2}'}  # a mapping setting: JSON text in the frame
    report = subprocess.run([sys.executable, "-m", "analysis", "report", "--store", str(store), "--out",
                             str(tmp_path / "report")], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "report" / "summary.csv").exists()
    # undecided (every optimum at the grid's edge): the cells to run, as a command that names the
    # model and its arguments as Hydra reads them back
    following = subprocess.run([sys.executable, "-m", "analysis", "answer", "--store", str(store)], cwd=REPO, env=ENV,
                               capture_output=True, text=True, timeout=300)
    assert following.returncode == 0, following.stderr[-3000:]
    assert "'model_args={mlp_ratio:2}'" in following.stdout, following.stdout
