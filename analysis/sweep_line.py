"""A table's cells as the sweep line that runs them: ``python sweep.py -m ...``.

The line repeats every result setting of its cells that the sweep would not pick by itself: those
differing from the composed sweep config (conf/sweep.yaml plus the records' experiment, when
conf/experiment/ has it), plus the size axes, the group's settings, and the keys the experiment
sweeps by default (command-line values replace them). The report's line that decides an undecided
verdict and the search's next round (sweeper.search.next_cells) are both written here.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable

import pandas as pd
from hydra.errors import HydraException
from omegaconf import DictConfig

from sweeper.grid.argv import hydra_quote
from sweeper.grid.experiments import compose_sweep, has_experiment, sweep_settings
from sweeper.store.schema import result_config

from . import AnalysisError
from .tables import LR, SEED, SIZE_AXES, Table, group_columns, value_text

_PLAIN = re.compile(r"[A-Za-z_./][\w./-]*")


def override_value(value) -> str:
    """A setting as Hydra reads it back: true/false, a number, or a string (quoted where needed)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return value_text(value) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):  # model_args, model_roles: Hydra's {key: value}
        return "{" + ",".join(f"{key}:{override_value(v)}" for key, v in value.items()) + "}"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in ("true", "false", "null", "nan", "inf"):
        return text
    return hydra_quote(text)


def compose(experiment: str | None, conf_dir: Path) -> DictConfig:
    """The sweep config (with ``experiment=``, when given) as sweeper.grid.experiments.compose_sweep
    composes it; Hydra's errors become an AnalysisError that says to pass --conf."""
    try:
        return compose_sweep(experiment, conf_dir)
    except HydraException as err:
        raise AnalysisError(f"cannot compose the sweep config {f'experiment={experiment}' if experiment else ''} "
                            f"from {conf_dir}: {str(err).splitlines()[0]} Pass the sweep's config dir with --conf.") from None


def sweep_defaults(experiment: str | None, conf_dir: Path) -> tuple[dict, set[str]]:
    """Result settings a sweep gets without overrides (with ``experiment=``, when given), and the keys
    the experiment's default grid sweeps."""
    cfg = compose(experiment, conf_dir)
    swept = set(cfg.hydra.sweeper.params or {})
    return result_config(sweep_settings(cfg)), swept


def sweep_lookup(frame: pd.DataFrame, conf_dir: Path) -> tuple[list[str], Callable]:
    """The group columns of ``frame`` as build_tables groups them, and sweep_defaults per experiment,
    composed once each: what row_records and command need."""
    groups = group_columns(frame[frame[LR].notna()])
    cache: dict = {}

    def defaults_of(experiment):
        if experiment not in cache:
            cache[experiment] = sweep_defaults(experiment, conf_dir)
        return cache[experiment]

    return groups, defaults_of


def known_experiment(experiment, conf_dir: Path) -> str | None:
    """The records' experiment when the sweep has a config of that name (ingested ones have none)."""
    return experiment if has_experiment(experiment, conf_dir) else None


def row_records(frame: pd.DataFrame, groups: list[str], table: Table, size: float) -> pd.DataFrame:
    """The finished records behind one table row: its title's values, its size, and the group
    columns its title leaves out being missing there too."""
    mask = (frame[table.axis] == size) & frame["status"].isin(("ok", "diverged"))
    for column, value in table.title.items():
        mask &= frame[column] == value
    for column in groups:
        if column not in table.title:
            mask &= frame[column].isna()
    return frame[mask]


def command(records: pd.DataFrame, table: Table, lrs: list[float], store: Path, conf_dir: Path,
            defaults_of, seeds: list[int] | None = None) -> list[str]:
    """``python sweep.py -m ...`` running ``lrs`` with the rows' settings (and ``seeds`` instead of
    theirs, when given), into ``store``."""
    experiment = known_experiment(records["experiment"].iloc[0], conf_dir)
    defaults, swept = defaults_of(experiment)
    configs = [result_config({k: v for k, v in row.items() if k in defaults and not _missing(v)})
               for row in records.to_dict("records")]
    always = {*SIZE_AXES, *table.title, *swept} - {LR}
    settings = []
    for key in defaults:
        values = seeds if key == SEED and seeds else _distinct([c[key] for c in configs])
        if key != LR and (key in always or len(values) > 1 or values[0] != defaults[key]):
            settings.append(f"{key}={','.join(override_value(v) for v in values)}")  # >1: sizes, seeds
    head = ["python", "sweep.py", "-m", f"store={override_value(str(store))}"]
    head += [f"experiment={experiment}"] if experiment else []
    return head + settings + [f"{LR}=" + ",".join(value_text(v) for v in lrs)]


def _distinct(values: list) -> list:
    """The distinct values, sorted; mappings (model_args, model_roles) in the order first seen."""
    if any(isinstance(v, dict) for v in values):
        return list({json.dumps(v, sort_keys=True): v for v in values}.values())
    return sorted(set(values))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
