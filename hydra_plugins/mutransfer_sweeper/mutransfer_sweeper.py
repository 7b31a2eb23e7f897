"""Hydra sweeper ``hydra/sweeper=mutransfer``: the grid syntax, store-aware resume and progress,
and ``search=transfer`` (sweeper.search.sweep).

Thin on purpose: it adapts Hydra's config loader and launcher to sweeper.jobs.driver.run_sweep.
"""
# (no "from __future__ import annotations": Hydra execs plugin modules outside sys.modules,
#  where dataclasses cannot resolve string annotations)

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict


@dataclass
class MutransferSweeperConf:
    _target_: str = "hydra_plugins.mutransfer_sweeper.mutransfer_sweeper.MutransferSweeper"
    # Cells launched together. None: 1 with the basic launcher run in the sweep's process (jobs=1),
    # one per CPU core with submitit_local (it runs a whole batch at once), the whole grid otherwise
    # (the basic launcher's worker processes, jobs at a time; one Slurm array, its
    # array_parallelism caps how many run). A progress line comes as each cell finishes.
    max_batch_size: Optional[int] = None
    # The default grid, e.g. {width: "128,...,4096", lr: "-10:-5"}; command-line values replace it
    # per key. Quote values in YAML: unquoted 2:5 is read as a base-60 number.
    params: Optional[Dict[str, str]] = None


LAUNCHER_LOGGERS = ("hydra._internal.core_plugins.basic_launcher",
                    "hydra_plugins.hydra_submitit_launcher.submitit_launcher")

ConfigStore.instance().store(group="hydra/sweeper", name="mutransfer", node=MutransferSweeperConf,
                             provider="mutransfer")


class MutransferSweeper(Sweeper):
    def __init__(self, max_batch_size: Optional[int] = None,
                 params: Optional[Dict[str, str]] = None) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None
        self.task_function: Optional[TaskFunction] = None
        self.pool: Any = None  # sweeper.jobs.local_pool.LocalPool when the basic launcher runs jobs > 1

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        # Hydra's launchers log two lines per job; the sweep prints its own line per cell
        for name in LAUNCHER_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO if config.get("verbose") else logging.WARNING)
        self.task_function = task_function
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def _basic(self) -> bool:
        return str(self.config.hydra.launcher.get("_target_", "")).endswith("BasicLauncher")

    def _batch_size(self) -> Optional[int]:
        if self.max_batch_size:
            return self.max_batch_size
        launcher = self.config.hydra.launcher
        target = str(launcher.get("_target_", ""))
        if self.pool is not None:
            return None  # its workers take cell after cell
        if target.endswith("BasicLauncher"):
            return 1
        if target.endswith("submitit_launcher.LocalLauncher"):
            return max(1, (os.cpu_count() or 1) // (launcher.get("cpus_per_task") or 1))
        return None

    def _cells_on(self) -> Optional[str]:
        """"cuda" when the launcher gives each cell a GPU (Slurm's gpus_per_task, gpus_per_node or a
        gpu gres): there precision=auto means bf16 whatever the machine the sweep plans on."""
        launcher = self.config.hydra.launcher
        gpus = launcher.get("gpus_per_task") or launcher.get("gpus_per_node") or "gpu" in str(launcher.get("gres") or "")
        return "cuda" if gpus else None

    def _compose(self, overrides: List[str]) -> DictConfig:
        from sweeper.grid.app_config import SweepAppConfig
        from trainer.cli import explain_hydra_error

        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        except HydraException as err:
            raise ValueError(explain_hydra_error(err, list(SweepAppConfig.__dataclass_fields__))) from None
        with open_dict(cfg):  # keeps the typed root, so cells' values are validated on update
            del cfg["hydra"]
        return cfg

    def _launch(self, batch: List[List[str]],
                submitted: Callable[[List[str]], None]) -> List[Optional[BaseException]]:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

        first, self._launched = self._launched, self._launched + len(batch)
        if self.pool is not None:
            return self.pool.launch(batch, first)
        if isinstance(self.launcher, BaseSubmititLauncher):  # settles each job, even a killed one
            from sweeper.jobs.submitit_jobs import launch

            return launch(self.launcher, batch, first, submitted)
        from sweeper.jobs.job_return import failure

        returns: Sequence[JobReturn] = self.launcher.launch(batch, initial_job_idx=first)
        return [failure(r) for r in returns]

    def sweep(self, arguments: List[str]) -> Any:
        from sweeper.jobs.driver import SweepError
        from sweeper.store import Store, StoreError

        cfg = self.config
        self._preflight(cfg, self._overrides(arguments))
        store = Store((Path(cfg.hydra.runtime.cwd) / Path(str(cfg.store)).expanduser()).resolve())
        try:
            store.check_writable()  # before the sweep's log dir, which lives in the store
        except StoreError as err:
            raise SweepError(str(err)) from None
        store.note_asked(cfg.hydra.runtime.choices.get("experiment"), self._overrides(arguments))
        sweep_dir = Path(str(cfg.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, sweep_dir / "multirun.yaml")
        if self._basic():
            self._start_pool(cfg)
        try:
            return self._sweep(cfg, store.path, arguments)
        finally:
            if self.pool is not None:
                self.pool.close()
                self.pool = None

    def _overrides(self, arguments: List[str]) -> List[str]:
        """The experiment's default grid, then the command line's overrides (which replace it per key)."""
        return [f"{k}={v}" for k, v in self.params.items()] + list(arguments)

    def _preflight(self, cfg: DictConfig, overrides: List[str]) -> None:
        """Raises SweepError, one line per mistake, before anything is written or launched."""
        from sweeper.jobs.driver import SweepError
        from sweeper.grid.expand import GridError, expand
        from sweeper.grid.preflight import preflight

        try:
            cells = expand(overrides)
        except GridError as err:
            raise SweepError(str(err)) from None
        problems = preflight(cells, cfg.hydra.launcher, cfg.hydra.runtime.choices.get("cluster"),
                             str(cfg.dataset), cfg.get("data_dir"), int(cfg.gpus_per_cell), int(cfg.nodes_per_cell))
        if problems:
            raise SweepError("\n".join(problems) + "\nnothing was launched")

    def _start_pool(self, cfg: DictConfig) -> None:
        """Worker processes for the basic launcher when ``jobs`` asks for more than one cell at once."""
        from sweeper.jobs.driver import SweepError
        from sweeper.jobs.local_pool import LocalPool, gpu_slots, resolve_jobs, usable_cores, visible_gpus

        per_cell = int(cfg.gpus_per_cell)
        gpus = visible_gpus(cfg.device)
        try:
            jobs = resolve_jobs(cfg.jobs, int(cfg.threads) * per_cell, gpus=len(gpus), gpus_per_cell=per_cell)
        except ValueError as err:
            raise SweepError(str(err)) from None
        if jobs > 1:
            if str(cfg.jobs) != "auto":
                how = f"jobs={cfg.jobs}"
            elif gpus:
                how = f"jobs=auto: {len(gpus)} GPUs ÷ gpus_per_cell={per_cell}"
            else:
                how = f"jobs=auto: {usable_cores()} cores ÷ threads={cfg.threads}"
            print(f"[sweep] {jobs} cells at a time in worker processes ({how})", flush=True)
            if gpus and jobs * per_cell > len(gpus):
                print(f"[sweep] warning: {jobs} cells of {per_cell} GPU(s) share {len(gpus)} GPU(s); each "
                      f"cell's micro batch is planned as if its GPUs were its own", flush=True)
            self.pool = LocalPool(jobs, self.hydra_context, self.config, self.task_function,
                                  gpus=gpu_slots(gpus, per_cell, jobs))

    def _sweep(self, cfg: DictConfig, store: Path, arguments: List[str]) -> Any:
        from sweeper.jobs.driver import SweepSettings, run_sweep

        settings = SweepSettings(
            store=store,
            force=bool(cfg.force),
            experiment=cfg.hydra.runtime.choices.get("experiment"),
            batch_size=self._batch_size(),
            cells_on=self._cells_on(),
        )
        self._launched = 0
        overrides = self._overrides(arguments)
        if cfg.search.name == "transfer":  # rounds of cells through the same launcher
            from sweeper.search.sweep import run_transfer_sweep

            return run_transfer_sweep(overrides, settings, self._compose, self._launch,
                                      budget=float(cfg.search_budget), refine=bool(cfg.search_refine))
        return run_sweep(overrides, settings, self._compose, self._launch)
