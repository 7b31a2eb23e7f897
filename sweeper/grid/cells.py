"""Cells -> validated trainer configs and keys, and which of them the store already holds.

Everything that can be checked without training is checked here, for every cell to run, before any
job starts: a grid with one bad cell stops whole, with the cells and the fix named.

The sweep's settings are composed by Hydra once; each cell then sets its axis values on a copy.
That is the same config Hydra composes for the job (the axes are plain settings, never config
groups) at a millisecond a cell instead of a full composition.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainer.config import TrainConfig, device_type, resolve_precision

from .expand import Cell, GridError
from sweeper.store.schema import DONE, cell_key
from sweeper.store import Store
from .app_config import trainer_values

_MAX_LISTED = 4


@dataclass(frozen=True)
class PlannedCell:
    cell: Cell
    config: TrainConfig
    key: str
    previous: Optional[str]  # status of the record already in the store, if any


def resolved_config(config: TrainConfig, cells_on: Optional[str]) -> TrainConfig:
    """``config`` with its precision as its job will run it: auto is resolved here, for the device the
    cells run on (``cells_on``: "cuda" when the launcher gives each cell a GPU; None: this machine),
    and the job is told the result (job_overrides), so its key is the planned one wherever it lands."""
    if config.precision != "auto":
        return config
    where = cells_on if config.device == "auto" and cells_on else device_type(config.device)
    return replace(config, precision=resolve_precision("auto", where))


def job_overrides(planned: "PlannedCell") -> list[str]:
    """What a cell's job composes: the cell's overrides, its resolved precision and its key."""
    kept = [o for o in planned.cell.overrides if o.split("=", 1)[0] != "precision"]
    return [*kept, f"precision={planned.config.precision}", f"planned_cell={planned.key}"]


def cell_config(base: DictConfig, cell: Cell, parser: OverridesParser) -> TrainConfig:
    cfg = base.copy()
    for key, value in cell.axes:
        try:
            OmegaConf.update(cfg, key, parser.parse_override(f"{key}={value}").value(), merge=False)
        except OmegaConfBaseException as err:
            raise ValueError(f"{key}={value}: {str(err).splitlines()[0]}") from None
    config = TrainConfig.from_mapping(trainer_values(OmegaConf.to_container(cfg, resolve=True)))
    config.validate()
    return config


def _raise_problems(problems: dict[str, list[str]], total: int) -> None:
    lines = []
    for message, labels in problems.items():
        shown = "; ".join(labels[:_MAX_LISTED]) + (
            f"; and {len(labels) - _MAX_LISTED} more" if len(labels) > _MAX_LISTED else "")
        lines.append(f"{message}\n    (cells: {shown})")
    bad = sum(len(v) for v in problems.values())
    raise GridError(f"{bad} of {total} cells cannot run, nothing was started:\n  " + "\n  ".join(lines))


def plan(cells: list[Cell], compose: Callable[[list[str]], DictConfig], store: Store,
         force: bool, cells_on: Optional[str] = None) -> tuple[list[PlannedCell], list[PlannedCell]]:
    """(cells to run, cells skipped because the store has them done). Cells that are the same run
    (same key) as an earlier one are dropped. ``compose(overrides)`` gives the app config without
    its hydra node, unresolved, or raises ValueError. ``cells_on``: see resolved_config."""
    if not cells:
        return [], []
    try:
        base = compose(list(cells[0].overrides))
    except ValueError as err:
        raise GridError(str(err)) from None
    parser = OverridesParser.create()
    planned: dict[str, PlannedCell] = {}
    problems: dict[str, list[str]] = {}
    for cell in cells:
        try:
            config = resolved_config(cell_config(base, cell, parser), cells_on)
        except ValueError as err:
            problems.setdefault(str(err), []).append(cell.label())
            continue
        key = cell_key(config.to_dict())
        planned.setdefault(key, PlannedCell(cell, config, key, store.status(key)))
    todo = [c for c in planned.values() if force or c.previous not in DONE]
    if problems:
        _raise_problems(problems, len(cells))
    return todo, [c for c in planned.values() if c not in todo]
