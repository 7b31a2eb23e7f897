"""The sweep app's typed config: every trainer setting plus the sweep's own two settings.

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


APP_FIELDS = ("store", "force")

ConfigStore.instance().store(name="sweep_schema", node=SweepAppConfig)


def trainer_values(values: dict) -> dict:
    """A composed app config (without ``hydra``) -> the TrainConfig's settings."""
    return {k: v for k, v in values.items() if k not in APP_FIELDS and k != "hydra"}
