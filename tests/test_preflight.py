"""Mistakes a sweep catches before anything trains: one line each naming the fix, a non-zero exit,
and no store, job or data written (the real sweep.py, run as a user runs it)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper.grid.expand import expand

ROOT = Path(__file__).resolve().parent.parent


def sweep(args, cwd, **env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), "-m", "experiment=smoke", "store=store",
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, env, says", [
    (["lr=0.001"], {}, ["lr=0.001: lr is log2 η_base: did you mean lr=-9.97?"]),
    (["lr=0.001,0.01"], {}, ["lr=0.001: lr is log2 η_base: did you mean lr=-9.97?",
                             "lr=0.01: lr is log2 η_base: did you mean lr=-6.64?"]),
    (["cluster=local"], {"PATH": "{empty}"},
     ["cluster=local submits Slurm jobs, but sbatch and srun are not on PATH"]),
    (["cluster=example_gpu"], {"PATH": "{empty}", "HOME": "{home}"},
     ["cluster=example_gpu: its setup line '. $HOME/mutransfer/.venv/bin/activate' sources "
      "{home}/mutransfer/.venv/bin/activate, which does not exist: replace the placeholders in "
      "conf/cluster/example_gpu.yaml"]),
    (["dataset=openwebtext", "data_dir={home}/data"], {},
     ["dataset=openwebtext is not prepared: {home}/data/openwebtext has no train.bin and val.bin; "
      "run `python -m trainer.data prepare openwebtext --data-dir {home}/data` first"]),
    (["width=32..128"], {}, ["width=32..128: not a value of width. did you mean width=32,...,128 (doubling) "
                             "or width=32:128 (every integer)?"]),
    (["width=[32,64]"], {}, ["width takes a number, a list a,b,c, a doubling progression a,...,b or a "
                             "range a:b"]),
    (["lr=-10..-5"], {}, ["did you mean lr=-10:-5?"]),
    (["widht=32"], {}, ["unknown setting 'widht': did you mean 'width'?"]),
    (["cluster=local", "hydra.launcher.tasks_per_node=1", "gpus_per_cell=2"], {"PATH": "{empty}"},
     ["gpus_per_cell=2 nodes_per_cell=1, but conf/cluster/local.yaml gives each cell's job 1 task(s) per "
      "node on 1 node(s): set hydra.launcher.tasks_per_node: ${{oc.select:gpus_per_cell,1}} and nodes: ${{oc.select:nodes_per_cell,1}}"]),
], ids=["lr as eta", "lr list as eta", "no slurm", "example profile", "no data", "two dots", "yaml list",
        "lr two dots", "typo", "a profile without a task per rank"])
def test_a_mistake_is_one_line_before_anything_trains(tmp_path, args, env, says):
    home = tmp_path / "home"
    (tmp_path / "empty").mkdir()
    fill = {"empty": tmp_path / "empty", "home": home}
    run = sweep([a.format(**fill) for a in args], tmp_path, **{k: v.format(**fill) for k, v in env.items()})
    assert run.returncode != 0
    for line in says:
        assert line.format(**fill) in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "[sweep]" not in run.stdout
    assert "could not be converted" not in run.stderr
    assert not (tmp_path / "store").exists() and not home.exists()  # nothing written, nothing prepared


def test_lr_is_refused_only_where_it_reads_as_eta():
    from sweeper.grid.preflight import lr_problems

    assert lr_problems(expand(["lr=0.5"])) == ["lr=0.5: lr is log2 η_base: did you mean lr=-1.00?"]
    assert lr_problems(expand(["lr=-1:1:0.5"])) == []  # a log2 grid that crosses zero
    assert lr_problems(expand(["lr=0,1,2"])) == []  # eta_base >= 1: odd, but no plain eta reads so
    assert lr_problems(expand(["width=32"])) == []  # the config's lr (log2, from the schema)
