"""The sweep app's typed config: every trainer setting plus the sweep's own settings.

Registered as ``sweep_schema`` for conf/sweep.yaml, so a typo or a wrongly typed value fails at
composition, as it does for the trainer's own CLI.
"""
from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from trainer.config import TrainConfig


@dataclass
class SweepAppConfig(TrainConfig):
    store: str = "store"  # the result store directory; relative paths are against the launch dir
    force: bool = False  # rerun cells whose record is already ok or diverged
    # A finished cell's checkpoint (weights and optimizer state, GBs per cell at paper scale) is
    # only needed to resume it: deleted once its record is written, unless kept.
    keep_checkpoints: bool = False


APP_FIELDS = ("store", "force", "keep_checkpoints")

ConfigStore.instance().store(name="sweep_schema", node=SweepAppConfig)


def trainer_values(values: dict) -> dict:
    """A composed app config (without ``hydra``) -> the TrainConfig's settings."""
    return {k: v for k, v in values.items() if k not in APP_FIELDS and k != "hydra"}
