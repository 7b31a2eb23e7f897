"""`python -m analysis next`: per table row, new log2 eta cells from optuna, as sweep commands that
the sweeper's own grid parser and Hydra's composition read back into the row's cells."""
from __future__ import annotations

import json
import shlex

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from analysis.__main__ import main
from analysis.ingest import ingest
from analysis.next_cells import CONF_DIR, NextOptions, plan_next
from analysis.report import analyse
from sweeper.grid import expand
from sweeper.record import make_record, result_config
from sweeper.result_store import load_store, write_record
from sweeper.schema import trainer_values
from test_analysis_cli import FIXTURES, analysis, imported_modules

SWEEP = ["python", "sweep.py", "-m"]


def composed(overrides: list[str]) -> dict:
    """The result settings a sweep job would train with, composed by Hydra as sweep.py does."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("sweep", overrides=overrides)
    return result_config(trainer_values({k: cfg[k] for k in cfg}))


def sweep_cells(command: str) -> list[dict]:
    """A printed command line -> its cells' overrides as dicts, through the sweeper's grid parser."""
    argv = shlex.split(command)
    assert argv[:3] == SWEEP
    return [dict(o.split("=", 1) for o in cell.overrides) for cell in expand(argv[3:])]


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """The paper's Tables 8-9 (no optimum on an edge) and 12-13 (depth >= 32 of muP: on the edge)."""
    store = tmp_path_factory.mktemp("paper") / "store"
    for name in ("paper_tables_8_9.csv", "paper_tables_12_13.csv"):
        ingest(FIXTURES / name, store)
    return store


def test_next_proposes_new_cells_near_each_rows_optimum_without_importing_torch(paper):
    run = analysis("next", "--store", paper, "--json", python_flags=("-X", "importtime"))
    assert run.returncode == 0, run.stderr
    plans = json.loads(run.stdout)
    analysed = analyse(load_store(paper))
    optima = {(a.table.name, o.size): o for a in analysed for o in a.optima}
    assert {(p["table"], p["size"]) for p in plans} == set(optima)  # the report's rows, each once
    edges = 0
    for plan in plans:
        best, finished = optima[plan["table"], plan["size"]], np.array(plan["finished"])
        suggested = plan["suggested"]
        assert len(suggested) == len(set(suggested)) == 2, plan
        assert all(np.abs(finished - s).min() >= 0.25 for s in suggested), plan  # never a cell run
        assert all(abs(s - best.lr) <= 1.0 for s in suggested), plan  # within a grid step of the best
        if best.edge == "above":
            edges += 1
            assert max(suggested) > finished.max(), plan  # looks beyond the grid's edge
    assert edges == 4  # muP depths 32..256 of Table 13
    modules = imported_modules(run.stderr)
    assert "optuna" in modules  # the check sees imports at all
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}


def test_printed_commands_parse_back_into_the_rows_cells(paper, capsys):
    assert main(["next", "--store", str(paper), "--per-row", "3"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line and not line.startswith("#")]
    plans = plan_next(NextOptions(paper, per_row=3))
    assert len(commands) == len(plans) == 26
    for command, plan in zip(commands, plans):
        cells = sweep_cells(command)
        assert sorted(float(c["lr"]) for c in cells) == plan.suggested
        assert {float(c[plan.axis]) for c in cells} == {plan.size}
    # A cell of Table 13 (layernorm=false is not the default) and one of Table 8 compose to the
    # settings of the records they extend, apart from lr.
    records = load_store(paper).to_dict("records")
    for command in (commands[0], commands[-1]):
        cell = sweep_cells(command)[0]
        settings = composed([f"{k}={v}" for k, v in cell.items() if k != "store"])
        same = [r for r in records if all(str(r[k]).lower() == cell[k].lower() for k in ("width", "depth", "param", "layernorm"))]
        known = {k: same[0][k] for k in settings if not pd.isna(same[0][k])}  # ingested: unknown
        assert settings == {**result_config(known), "lr": float(cell["lr"])}


def test_command_repeats_what_the_experiment_would_not_set_and_rows_need_two_cells(tmp_path):
    # A sweep of experiment=smoke with steps=200 (the trainer default, which smoke sets to 20) and two
    # seeds, as records of the trainer: width 32 and 64 at three lrs, width 128 at one.
    store, base = tmp_path / "store", ["experiment=smoke", "steps=200"]
    swept = composed(base)
    for width, lrs in ((32, (-10, -9, -8)), (64, (-10, -9, -8)), (128, (-9,))):
        for lr in lrs:
            for seed in (0, 1):
                config = {**swept, "width": width, "lr": lr, "seed": seed}
                loss = 3.0 + 0.1 * (lr + 9.3) ** 2 + 0.01 * seed
                diverged = width == 64 and lr == -8
                write_record(store, make_record(config, "diverged" if diverged else "ok", experiment="smoke",
                                                metrics={"val_loss": None if diverged else loss}))
    plans = {p.size: p for p in plan_next(NextOptions(store))}
    assert plans[128].argv is None and plans[128].note.startswith("run the grid first: 1 finished cell")
    for width in (32, 64):
        argv = plans[width].argv
        assert argv[:4] == [*SWEEP, f"store={store}"] and "experiment=smoke" in argv
        assert {"steps=200", "seed=0,1", "depth=2"} <= set(argv)
        cells = sweep_cells(shlex.join(argv))
        assert sorted({float(c["lr"]) for c in cells}) == plans[width].suggested
        assert sorted(int(c["seed"]) for c in cells) == [0, 0, 1, 1]
        cell = cells[-1]
        assert composed([f"{k}={v}" for k, v in cell.items() if k != "store"]) == result_config(
            {**swept, "width": width, "lr": float(cell["lr"]), "seed": int(cell["seed"])})


@pytest.mark.parametrize("args, expected", [
    (("--experiment", "nope"), "no records of experiment 'nope' in {store}; its experiments: paper_tables_12_13"),
    (("--per-row", "0"), "--per-row 0: ask for at least 1 new value per row"),
    (("--conf", "{store}"), "{store} holds no sweep.yaml: pass the sweep's config dir with --conf"),
], ids=["unknown experiment", "no values", "no sweep config"])
def test_bad_options_are_one_clear_line(paper, capsys, args, expected):
    assert main(["next", "--store", str(paper), *(a.format(store=paper) for a in args)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected.format(store=paper) in err and len(err.splitlines()) == 1
