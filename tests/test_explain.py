"""`python -m trainer.explain`: the parameterization table of a model, as text or JSON."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.cli import load_config
from trainer.explain import explain, main, to_row

REPO = Path(__file__).resolve().parent.parent
KEYS = {"name", "role", "shape", "init_std", "multiplier", "lr", "weight_decay", "eps", "table"}
OVERRIDES = ["width=1024", "depth=16", "param=mup", "optimizer=muon_kimi"]


def run_explain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.explain", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_json_rows_have_exactly_the_keys_and_the_table_values():
    done = run_explain(*OVERRIDES, "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert rows and all(set(row) == KEYS for row in rows)
    expected = [to_row(g) for g in explain(load_config(OVERRIDES), vocab_size=256)]  # embedded data: bytes
    assert rows == expected
    by_name = {row["name"]: row for row in rows}
    q = by_name["h.*.attn.q.weight"]  # Table 1: eta/sqrt(r_n) = 2^-8/sqrt(4); sigma/sqrt(r_n); alpha/r_L
    assert (q["role"], q["shape"], q["lr"], q["init_std"], q["multiplier"], q["eps"]) == \
        ("hidden", [1024, 1024], 2.0 ** -9, 0.01, 0.25, None)
    assert math.isclose(by_name["wte.weight"]["eps"], 1e-16 / 4)  # AdamW (Table 5): eps/r_n
    assert by_name["h.*.ln_1.bias"]["init_std"] is None and by_name["lm_head.weight"]["multiplier"] == 0.25


def test_text_table_has_a_model_header_and_one_aligned_line_per_group(capsys):
    assert main(["width=128", "depth=2", "param=mup_k1", "optimizer=adamw"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head, columns, body = lines[0], lines[1], lines[2:]
    for part in ("width=128", "depth=2", "heads=2", "vocab=256", "r_n=0.5", "r_L=0.5", "eta_base=2^-8",
                 "param=mup_k1", "optimizer=adamw"):
        assert part in head.split(), part
    groups = explain(load_config(["width=128", "depth=2", "param=mup_k1", "optimizer=adamw"]), 256)
    assert [line.split()[0] for line in body] == [g.name for g in groups]
    for title in ("role", "shape", "init_std", "multiplier", "lr", "weight_decay", "eps", "table"):
        column = columns.index(title)
        # aligned: every row has a cell starting at the header's column
        assert all(line[column - 2:column] == "  " and line[column] != " " for line in body), title
    q = next(line for line in body if line.startswith("h.*.attn.q.weight "))
    assert "Table 5 (AdamW/Lion), hidden weights + B.1 (k=1)" in q


@pytest.mark.parametrize("args,words", [
    (["optimizer=adam"], ["optimizer='adam'", "muon_kimi, muon, adamw, sgd, lion"]),
    (["param=mu"], ["param='mu'", "sp, mup, mup_k1"]),
    (["width=1024", "--jsn"], ["--jsn"]),
])
def test_bad_input_is_one_error_line_and_exit_2(capsys, args, words):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err


def test_a_misspelt_setting_exits_2_with_one_line_and_no_traceback():
    done = run_explain("widht=1024", "--json")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == ["error: unknown setting 'widht': did you mean 'width'?"]


def test_soap_with_matrix_io_cites_table_3_and_shows_its_eps(capsys):
    assert main(["width=1024", "depth=16", "optimizer=soap", "matrix_io=true", "--json"]) == 0
    by_name = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    out = by_name["lm_head.weight"]  # Table 3 output row: eta*sqrt(r_n), SOAP's eps unscaled
    assert out["table"] == "Table 3 (SOAP), output weights" and out["lr"] == 2.0 ** -7 and out["eps"] == 1e-16
    assert by_name["h.*.attn.q.bias"]["table"].startswith("Table 5 (AdamW/Lion), hidden biases")


def test_the_header_shows_the_settings_only_this_optimizer_reads_as_it_runs_them(capsys):
    assert main(["width=64", "depth=4", "optimizer=sophia", "hessian_interval=5"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith("optimizer=sophia hessian_interval=5 sophia_rho=0.04")
    assert main(["width=64", "depth=4", "optimizer=adamw"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("optimizer=adamw")
