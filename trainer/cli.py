"""Hydra at the trainer's edge: command-line overrides -> a validated TrainConfig."""
from __future__ import annotations

import difflib
import re

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf

from .config import CONF_DIR, TrainConfig

ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"known settings: {', '.join(sorted(known))}"
    return f"unknown setting '{key}': {hint}"


def explain_hydra_error(err: Exception, known: list[str]) -> str:
    """One clear line (or a short list of options) for a Hydra composition error."""
    text = str(err)
    match = re.search(r"Could not override '([^']+)'", text)
    if match:
        return unknown_key_message(match.group(1), known)
    if err.__cause__ is not None and text.startswith("Error merging override"):
        reason = str(err.__cause__).splitlines()[0]
        return f"{text.removeprefix('Error merging override ')}: {reason}"
    return text.split("\nConfig search path")[0].strip()


def load_config(overrides: list[str], config_name: str = "train") -> TrainConfig:
    """Composes conf/<config_name>.yaml with overrides like ``width=512``; raises ValueError on bad input."""
    known = list(TrainConfig.__dataclass_fields__)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=list(overrides))
    except HydraException as err:
        raise ValueError(explain_hydra_error(err, known)) from None
    values = OmegaConf.to_container(cfg, resolve=True)
    config = TrainConfig.from_mapping({k: v for k, v in values.items() if k in known})
    config.validate()
    return config
