"""Mistakes caught before the first cell is launched, one line each: a learning rate given as η
rather than log2 η, a Slurm profile on a machine without Slurm or with its example's placeholders,
and data that is not prepared. Each would otherwise fail (or, for lr, train) cell by cell.
Reads only: nothing is prepared, downloaded or submitted here.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Optional

from trainer.data.tokens import data_problem

from .expand import Cell

_SOURCED = re.compile(r"^\s*(?:\.|source)\s+(\S+)")  # a setup line that sources a file


def lr_problems(cells: Iterable[Cell]) -> list[str]:
    """``lr`` is log2 η_base. A positive value below 1 (η_base between 1 and 2) is almost always a
    plain η typed as in other tools (lr=0.001), so it is refused with the log2 meant; except on
    an axis that also holds values <= 0, a log2 grid crossing zero (lr=-1:1:0.5). Values >= 1
    (η_base >= 2) stay legal: odd for Adam, but an SGD or μP sweep may go there, and no plain η
    is typed that way."""
    values = sorted({float(v) for cell in cells for k, v in (o.split("=", 1) for o in cell.overrides)
                     if k == "lr"})
    if any(v <= 0 for v in values):
        return []
    return [f"lr={v:g}: lr is log2 η_base: did you mean lr={math.log2(v):.2f}?"
            for v in values if 0 < v < 1]


def _partitions() -> tuple[Optional[set[str]], str]:
    """The partitions Slurm lists, or None and why where it does not answer."""
    try:
        listed = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, str(err)
    if listed.returncode:
        return None, (listed.stderr.strip().splitlines() or [f"exit code {listed.returncode}"])[-1]
    return set(listed.stdout.split()), ""


def slurm_problems(cluster: str, launcher) -> list[str]:
    """A Slurm launcher's tools on PATH, its profile's values (the files its setup lines source, a
    virtualenv's activate) and, where the tools are, that Slurm answers and knows the partition."""
    where = f"cluster={cluster}" if cluster else "the Slurm launcher"
    problems = []
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        problems.append(f"{where} submits Slurm jobs, but {' and '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not on PATH: run the sweep on the "
                        f"cluster's login node (or start the local test cluster: slurm/local/start), "
                        f"or leave out cluster= to train on this machine")
    profile = f"conf/cluster/{cluster}.yaml" if cluster else "the profile"
    for line in launcher.get("setup") or []:
        match = _SOURCED.match(str(line))
        path = match and os.path.expanduser(os.path.expandvars(match.group(1)))
        if path and "$" not in path and not Path(path).exists():
            problems.append(f"{where}: its setup line '{line}' sources {path}, which does not exist: "
                            f"replace the placeholders in {profile} with your site's values")
    if missing:
        return problems
    known, why = _partitions()
    partition = launcher.get("partition")
    if known is None:
        problems.append(f"{where}: Slurm does not answer (sinfo: {why}): start its controller "
                        f"(the local test cluster: slurm/local/start) or run where Slurm runs")
    elif partition and str(partition) not in known:
        problems.append(f"{where}: partition '{partition}' is not one of this cluster's "
                        f"({', '.join(sorted(known)) or 'none'}): set partition in {profile}")
    return problems


def rank_problems(cluster: str, launcher, gpus_per_cell: int, nodes_per_cell: int) -> list[str]:
    """A Slurm profile must give each cell's job one task per rank (trainer.distributed): a profile
    written before gpus_per_cell existed gives one, and would train every rank on the first GPU."""
    tasks, nodes = launcher.get("tasks_per_node") or 1, launcher.get("nodes") or 1
    if (int(tasks), int(nodes)) == (gpus_per_cell, nodes_per_cell):
        return []
    return [f"gpus_per_cell={gpus_per_cell} nodes_per_cell={nodes_per_cell}, but "
            f"{f'conf/cluster/{cluster}.yaml' if cluster else 'the Slurm launcher'} gives each cell's job "
            f"{tasks} task(s) per node on {nodes} node(s): set hydra.launcher.tasks_per_node: "
            f"${{oc.select:gpus_per_cell,1}} and nodes: ${{oc.select:nodes_per_cell,1}} in it "
            f"(as conf/cluster/example_gpu.yaml does)"]


def preflight(cells: list[Cell], launcher, cluster: Optional[str], dataset: str,
              data_dir: Optional[str], gpus_per_cell: int = 1, nodes_per_cell: int = 1) -> list[str]:
    """Every problem found, one line each; empty when the sweep may start."""
    problems = lr_problems(cells)
    if str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        problems += slurm_problems(cluster or "", launcher)
        problems += rank_problems(cluster or "", launcher, gpus_per_cell, nodes_per_cell)
    data = data_problem(dataset, data_dir)
    if data:
        problems.append(data)
    return problems
