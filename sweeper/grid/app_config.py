"""The sweep app's typed config: every trainer setting plus the sweep's own settings.

Registered as ``sweep_schema`` for conf/sweep.yaml, so a typo or a wrongly typed value fails at
composition, as it does for the trainer's own CLI.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from hydra.core.config_store import ConfigStore

from trainer.config import TrainConfig

from .budget import BUDGET


class Search(Enum):
    grid = "grid"  # every cell of the grid
    transfer = "transfer"  # size by size, only the lrs where each size's optimum can be (sweeper.search.transfer)


@dataclass
class SweepAppConfig(TrainConfig):
    store: str = "store"  # the result store directory; relative paths are against the launch dir
    force: bool = False  # rerun cells whose record is already ok or diverged
    # A finished cell's checkpoint (weights and optimizer state, GBs per cell at paper scale) is
    # only needed to resume it: deleted once its record is written, unless kept.
    keep_checkpoints: bool = False
    search: Search = Search.grid
    # search=transfer settles a row without its third cell only where bracketing it would take the
    # search past this fraction of the full grid's compute
    search_budget: float = BUDGET
    # search=transfer: a bracketed row also gets the half step between its best cell and the better
    # neighbour, where the budget allows; otherwise the search stays on the line's lrs
    search_refine: bool = False
    # Cells trained at once on this machine (the basic launcher): "auto" is the cores this process
    # may use ÷ threads per cell (threads=0, torch's default of every core: one at a time); N > 1
    # runs N worker processes that each take cell after cell (sweeper.jobs.local_pool)
    jobs: str = "auto"
    # Set by the sweep for each job: the key of the cell it planned. Hydra composes a job's config
    # from the files again when the job starts, so a config edited mid-sweep would otherwise train
    # (and record) another cell than the one planned.
    planned_cell: str = ""
    # true: Hydra's launcher lines too ("Launching 1 jobs locally", each job's overrides); the
    # sweep's own progress line per cell is printed either way
    verbose: bool = False


APP_FIELDS = ("store", "force", "keep_checkpoints", "search", "search_budget", "search_refine", "jobs",
              "planned_cell", "verbose")

ConfigStore.instance().store(name="sweep_schema", node=SweepAppConfig)


def trainer_values(values: dict) -> dict:
    """A composed app config (without ``hydra``) -> the TrainConfig's settings."""
    return {k: v for k, v in values.items() if k not in APP_FIELDS and k != "hydra"}
