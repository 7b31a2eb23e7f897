"""`python -m analysis next`: the transfer search's next round per table, as sweep commands that
the sweeper's own grid parser and Hydra's composition read back into the row's cells."""
from __future__ import annotations

import json
import shlex

import pytest
from hydra import compose, initialize_config_dir

from analysis.__main__ import main
from analysis.ingest import ingest
from sweeper.search.next_cells import CONF_DIR, NextOptions, plan_next
from analysis.analysed import analyse
from sweeper.grid.expand import expand
from sweeper.store.schema import make_record, result_config
from sweeper.store.index import load_store
from sweeper.store.records import write_record
from sweeper.grid.app_config import trainer_values
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


def test_a_complete_grid_is_settled_and_edges_say_which_way_to_extend_without_importing_torch(paper):
    run = analysis("next", "--store", paper, "--json", python_flags=("-X", "importtime"))
    assert run.returncode == 0, run.stderr
    plans = json.loads(run.stdout)
    analysed = analyse(load_store(paper))
    optima = {(a.table.name, o.size): o for a in analysed for o in a.optima}
    assert {(p["table"], p["size"]) for p in plans} == set(optima)  # the report's rows, each once
    assert all(p["settled"] and not p["suggested"] and p["command"] is None for p in plans)
    edges = [p for p in plans if p["settled"] == "edge"]
    assert len(edges) == 4 and all("extend the line" in p["note"] for p in edges)  # muP depths 32..256, Table 13
    modules = imported_modules(run.stderr)
    assert "sweeper.search.transfer" in modules  # the check sees imports at all
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}


def test_a_partial_table_gets_the_searchs_next_cells_as_a_command_that_parses_back(tmp_path, capsys):
    lines = (FIXTURES / "paper_tables_8_9.csv").read_text().splitlines()
    # Table 9 (muP) up to width 1024, and one cell of width 2048 at the optimum of the sizes below
    rows = [l for l in lines[1:] if l.split(",")[-1] == "9" and int(l.split(",")[0]) <= 1024]
    rows += [l for l in lines if l.startswith("2048,4,-7,mup")]
    csv = tmp_path / "part.csv"
    csv.write_text("\n".join([lines[0], *rows]) + "\n")
    store = tmp_path / "store"
    ingest(csv, store)
    # budget 1: the search is never short of compute, so one cell at the prediction never settles a row
    plans = plan_next(NextOptions(store, budget=1.0))
    assert [p.settled for p in plans] == ["bracketed"] * 4 + [None]
    last = plans[-1]
    assert last.size == 2048 and last.suggested and -7.0 not in last.suggested
    assert all(abs(lr + 7) == 1 for lr in last.suggested)  # a neighbour of the cell that muP predicts
    assert main(["next", "--store", str(store), "--budget", "1"]) == 0
    [command] = [line for line in capsys.readouterr().out.splitlines() if line and not line.startswith("#")]
    cells = sweep_cells(command)
    assert sorted(float(c["lr"]) for c in cells) == last.suggested
    assert {float(c["width"]) for c in cells} == {2048.0}


def test_command_repeats_what_the_experiment_would_not_set(tmp_path):
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
    plans = {p.size: p for p in plan_next(NextOptions(store, budget=1.0))}
    assert plans[32].settled == plans[64].settled == "bracketed"  # 64: bounded by its diverged -8
    assert plans[128].settled is None and plans[128].suggested
    argv = plans[128].argv
    assert argv[:4] == [*SWEEP, f"store={store}"] and "experiment=smoke" in argv
    assert {"steps=200", "seed=0,1", "depth=2", "width=128"} <= set(argv)
    cells = sweep_cells(shlex.join(argv))
    assert sorted({float(c["lr"]) for c in cells}) == plans[128].suggested
    assert sorted(int(c["seed"]) for c in cells) == sorted([0, 1] * len(plans[128].suggested))
    cell = cells[-1]
    assert composed([f"{k}={v}" for k, v in cell.items() if k != "store"]) == result_config(
        {**swept, "width": 128, "lr": float(cell["lr"]), "seed": int(cell["seed"])})


@pytest.mark.parametrize("args, expected", [
    (("--experiment", "nope"), "no records of experiment 'nope' in {store}; its experiments: paper_tables_12_13"),
    (("--budget", "0"), "--budget 0: give a fraction of the grid's compute in (0, 1]"),
    (("--conf", "{store}"), "{store} holds no sweep.yaml: pass the sweep's config dir with --conf"),
], ids=["unknown experiment", "no values", "no sweep config"])
def test_bad_options_are_one_clear_line(paper, capsys, args, expected):
    assert main(["next", "--store", str(paper), *(a.format(store=paper) for a in args)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected.format(store=paper) in err and len(err.splitlines()) == 1
