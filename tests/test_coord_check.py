"""Coordinate check (D.2) over width and depth: the verdict passes mup and fails SP, k = 1's rules on
the model's k = 2 blocks, and three broken mups, each broken through the rule table (the seam every
model is built from).

Measured here (widths 32-128 at depth 2, depths 2-8 at width 32, seq 64, Muon-Kimi, one seed):
every slope of mup within ±0.11; SP's last block over depth +0.86, logits' update over width +0.46,
ΔW1·x over width +0.41; mup_k1's ΔW1·x over depth -0.50; mup without its output multiplier: Δlogits
over width +0.52, h -0.39; without 1/r_L: h over depth +0.85; with SP's hidden lr: ΔW1·x over width
+0.55 (h and Δh only +0.21: the embedding's update dominates the residual stream). The verdict's
margin (flat <= 0.2 < unclear < 0.35 <= not flat) sits between them.
"""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import parameterization as P
from trainer import rules as R
from trainer.cli import load_config
from trainer.coord_check import D2, coord_check, shapes
from trainer.coord_verdict import STEEP, verdicts

REPO = Path(__file__).resolve().parent.parent
WIDTHS, DEPTHS = [32, 64, 128], [2, 4, 8]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    overrides = {**D2, "base_width": 32, "base_depth": 2, "seq_len": 64, "threads": 1,
                 "data_dir": tmp_path_factory.mktemp("data")}
    return load_config([f"{k}={v}" for k, v in overrides.items()])


def verdict_of(base, param: str) -> str:
    found = verdicts(coord_check(base, WIDTHS, DEPTHS, [param], seeds=[0]))
    assert len(found) == 1 and {axis for axis, _ in found[0].slopes} == {"width", "depth"}
    return found[0].verdict


@pytest.mark.parametrize("param, expected", [("mup", "flat"), ("sp", "not flat")])
def test_the_verdict_passes_mup_and_fails_sp(base, param, expected):
    assert verdict_of(base, param) == expected


def test_k1s_rules_on_the_models_two_layer_blocks_fail_over_depth(base):
    # 1/sqrt(r_L) multiplier and lr: h and dh stay flat (B.1's first-order condition holds), but the
    # inner layer's own update shrinks with depth, so C2.3's second-order term vanishes.
    assert fails_on(base, "mup_k1", ("depth", "ΔW1·x (MLP, every block)"))


def fails_on(base, param: str, scale: tuple[str, str]) -> bool:
    """The verdict is "not flat" and the given (axis, scale) is one of the steep slopes."""
    (found,) = verdicts(coord_check(base, WIDTHS, DEPTHS, [param], seeds=[0]))
    return found.verdict == "not flat" and abs(found.slopes[scale]) >= STEEP


@pytest.mark.parametrize("column, position, scale", [
    (R.OUTPUT, "output", ("width", "Δlogits")), (R.HIDDEN, "block", ("depth", "Δh (last block)"))],
    ids=["no 1/r_n output multiplier", "no 1/r_L block multiplier"])
def test_a_mup_missing_one_multiplier_fails(base, monkeypatch, column, position, scale):
    largest = dataclasses.replace(base, param="mup", width=WIDTHS[-1], depth=DEPTHS[-1])
    assert getattr(P.multipliers(largest), position) < 1
    monkeypatch.setitem(R.FORWARD, column, dataclasses.replace(R.FORWARD[column], multiplier=R.Rule(R.BASE)))
    assert getattr(P.multipliers(largest), position) == 1
    assert fails_on(base, "mup", scale)


def test_mup_init_with_sps_hidden_learning_rate_fails(base, monkeypatch):
    kimi = R.RULES[R.KIMI]
    monkeypatch.setitem(R.RULES, R.KIMI, {**kimi, R.HIDDEN: dataclasses.replace(kimi[R.HIDDEN], lr=R.Rule(R.BASE))})
    wide = dataclasses.replace(base, param="mup", width=WIDTHS[-1])
    hidden = next(g for g in P.param_groups(P.build_model(wide, 256), wide) if g.role == "hidden")
    assert hidden.lr == wide.eta_base  # SP's hidden lr, with muP's init and multipliers
    assert fails_on(base, "mup", ("width", "ΔW1·x (MLP, every block)"))


def test_cli_writes_every_site_and_prints_the_verdict(tmp_path):
    out = tmp_path / "coord.json"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.coord_check", "--widths", "32,...,64", "--depths", "2,3",
         "--params", "mup", "--seeds", "0", "--out", str(out), "steps=2", "seq_len=32", "threads=1",
         f"data_dir={tmp_path / 'data'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert {(r["width"], r["depth"]) for r in rows} == set(shapes([32, 64], [2, 3])) == {(32, 2), (64, 2), (32, 3)}
    assert {r["step"] for r in rows} == {0, 1, 2}
    cell = [r for r in rows if (r["width"], r["depth"], r["step"]) == (32, 3, 2)]
    assert [(r["site"], r["block"]) for r in cell] == [("block", 0), ("block", 1), ("block", 2), ("mlp_update", 0),
                                                        ("mlp_update", 1), ("mlp_update", 2), ("logits", None)]
    assert all(r["delta_rms"] == 0 for r in rows if r["step"] == 0)
    assert all(r["rms"] == 0 for r in rows if r["step"] == 0 and r["site"] == "mlp_update")
    assert all(r["delta_rms"] > 0 for r in rows if r["step"] > 0)
    assert "mup (muon_kimi): " in proc.stdout and "slope" in proc.stdout


# The new optimizers under mup (issue 11), over widths at depth 2, each at a lr where it trains
# stably for D.2's 10 steps. Measured with the old check (slope of the last block's RMS): shampoo
# -0.03, sso -0.08 at 2^-7, sophia -0.10 at 2^-10.
@pytest.mark.parametrize("optimizer, lr", [("shampoo", -7), ("sso", -7), ("sophia", -10)])
def test_mup_is_flat_across_widths_for_the_new_optimizers(base, optimizer, lr):
    assert width_verdict(base, optimizer, lr) == "flat"


@pytest.mark.parametrize("eps", [1e-16, 1e-8])
def test_soap_under_table_3_grows_with_width_and_under_adams_hidden_row_is_flat_at_the_same_lr(base, monkeypatch, eps):
    """Measured, preconditioning every step, at 2^-7 (both rules are the same model at width 32):
    under Table 3 ΔW1·x grows +0.75 over widths 32-128 and h, dh +0.75; under Table 5's hidden row
    (eta/r_n, eps/(r_L r_n)) every slope is within ±0.10, with eps 1e-16 and 1e-8 alike."""
    soap = dataclasses.replace(base, precondition_frequency=1, adam_eps=eps)
    assert width_verdict(soap, "soap", -7) == "not flat"
    monkeypatch.setitem(R.RULES, R.SOAP, {**R.RULES[R.SOAP], R.HIDDEN: R.RULES[R.ADAM][R.HIDDEN]})
    assert width_verdict(soap, "soap", -7) == "flat"


def width_verdict(base, optimizer: str, lr: float) -> str:
    cfg = dataclasses.replace(base, optimizer=optimizer, lr=float(lr))
    (found,) = verdicts(coord_check(cfg, WIDTHS, [DEPTHS[0]], ["mup"], seeds=[0]))
    assert {axis for axis, _ in found.slopes} == {"width"}
    return found.verdict
