"""Trackers that show a run live, chosen by ``logger=none | tensorboard | wandb``: callbacks
(trainer.callbacks) over an optional package (``pip install -e '.[tracking]'``), imported only
when a run asks for one.

TensorBoard writes event files to ``tb_dir/run_name``, so ``tensorboard --logdir tb_dir`` shows
every run side by side. W&B takes its usual environment (WANDB_MODE=offline, WANDB_DIR,
WANDB_ENTITY, ...) and names the run ``run_name`` in group ``run_group`` of ``project``; a run
restarted under the same name (a requeued cell) resumes the same W&B run, whose id is derived
from the name.
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from typing import Optional, Protocol

from .callbacks import Callback

LOGGERS = ("none", "tensorboard", "wandb")
INSTALL = "pip install -e '.[tracking]'"
HPARAMS_METRIC = "val/loss"  # the scalar the HParams dashboard compares runs by


def check_installed(logger: str) -> None:
    """Raises ValueError, naming the install command, when the logger's package is missing."""
    if logger != "none" and importlib.util.find_spec(logger) is None:
        raise ValueError(f"logger={logger} needs the {logger} package: {INSTALL}")


def wandb_run_id(name: str) -> str:
    """The W&B run id of a run name, the same on every restart: the name where W&B accepts it as
    an id (a cell key does), else a hash of it."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        return name
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def config_table(config: dict) -> str:
    """The config as a Markdown table, which TensorBoard's text tab renders."""
    return "\n".join(["| setting | value |", "| --- | --- |",
                      *(f"| {name} | {value} |" for name, value in config.items())])


class TensorBoard(Callback):
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.writer = None

    def on_start(self, config: dict, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # Readers drop what an earlier attempt logged from purge_step on: a resumed run logs the
        # steps after its checkpoint again, a run started afresh (force=true) replaces them all.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=step + 1)
        self.writer.add_text("config", config_table(config), step)
        self._hparams(config)

    def _hparams(self, config: dict) -> None:
        """The run's settings for the HParams dashboard (its table and parallel coordinates), with
        val/loss (its last value: the final val loss) as the metric. Written into this run's own
        directory, beside its scalars, which add_hparams would not do (it makes a new one)."""
        from torch.utils.tensorboard.summary import hparams

        settings = {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}
        experiment, start, _ = hparams(settings, {HPARAMS_METRIC: 0.0})
        for summary in (experiment, start):
            self.writer.file_writer.add_summary(summary)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    on_eval = on_log

    def on_end(self, result) -> None:
        if self.writer is not None:  # None: the run ended before it started
            from torch.utils.tensorboard.summary import hparams

            self.writer.file_writer.add_summary(hparams({}, {})[2])  # the session's end
            self.writer.close()


class WandB(Callback):
    def __init__(self, name: Optional[str], group: Optional[str], project: Optional[str]) -> None:
        self.name, self.group, self.project = name, group, project
        self.run = None

    def on_start(self, config: dict, step: int) -> None:
        import wandb

        self.run = wandb.init(project=self.project, group=self.group, name=self.name,
                              id=wandb_run_id(self.name) if self.name else None, resume="allow",
                              config=config)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    on_eval = on_log

    def on_end(self, result) -> None:
        if self.run is not None:  # None: the run ended before it started
            self.run.finish(exit_code=0 if result is not None else 1)


class TrackerSettings(Protocol):
    """The settings of trainer.config.TrainConfig a tracker reads (config validates ``logger``
    with this module's names, so this module does not import it)."""

    logger: str
    tb_dir: Optional[str]
    run_name: Optional[str]
    run_group: Optional[str]
    project: Optional[str]


def trackers(cfg: TrackerSettings) -> list[Callback]:
    """The tracker that ``cfg.logger`` names; none for ``none``."""
    if cfg.logger == "tensorboard":
        return [TensorBoard(Path(cfg.tb_dir or "runs") / (cfg.run_name or ""))]
    if cfg.logger == "wandb":
        return [WandB(cfg.run_name, cfg.run_group, cfg.project)]
    return []
