"""The sweep app's config as a sweep would compose it: for status, ingest and ``analysis next``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf

from trainer.config import CONF_DIR

from .app_config import (
    trainer_values,  # importing it registers the sweep app's schema with Hydra
)


def has_experiment(name: Optional[str], conf_dir: Path = CONF_DIR) -> bool:
    return isinstance(name, str) and (conf_dir / "experiment" / f"{name}.yaml").is_file()


def compose_sweep(experiment: Optional[str], conf_dir: Path = CONF_DIR) -> DictConfig:
    """conf/sweep.yaml with ``experiment=NAME`` (when given), with its hydra node; raises Hydra's
    errors as they are."""
    overrides = [f"experiment={experiment}"] if experiment else []
    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        return compose("sweep", overrides=overrides, return_hydra_config=True)


def sweep_settings(cfg: DictConfig) -> dict:
    """A composed sweep config's trainer settings (without the hydra node)."""
    values = {k: cfg[k] for k in cfg if k != "hydra"}
    # a mapping setting (model_args, model_roles) as plain Python, as the record keeps it
    return trainer_values({k: OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
                           for k, v in values.items()})
