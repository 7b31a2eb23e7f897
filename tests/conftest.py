"""Shared fixtures: the local Slurm test cluster, polling for what a job does, and the store key of
a sweep cell."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTITION = "local"  # the partition slurm/local/start creates


# Modules whose tests start sweeps, ranks or Slurm jobs and act on them in time (Ctrl-C, kill -9,
# requeue). Under pytest-xdist (`-n 2 --dist loadgroup`, pyproject's addopts) they run one after
# another on one worker, as a single process would run them, and only that worker starts the local
# Slurm; the in-process tests share the other core.
SERIAL_MODULES = {
    "test_distributed", "test_distributed_slurm", "test_search", "test_slurm_cluster", "test_store_faults",
    "test_store_integrity", "test_sweep_e2e", "test_sweep_output", "test_sweep_parallel", "test_sweep_slurm",
    "test_train",
}
# Single tests of that kind in otherwise in-process modules: kills a two-worker sweep once two records
# are in and asserts the kill came in time.
SERIAL_TESTS = {"test_a_sweep_on_the_llama_trains_resumes_and_reports"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups into the test ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else None
        if module in SERIAL_MODULES or getattr(item, "originalname", None) in SERIAL_TESTS:
            item.add_marker(pytest.mark.xdist_group("serial"))


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Brings up (or checks) the local cluster; returns its partition."""
    if os.geteuid() != 0:
        pytest.skip("slurm/local/start installs packages and starts daemons: run the tests as root")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("Slurm is not installed and apt-get is unavailable to install it")
    proc = subprocess.run([str(REPO / "slurm" / "local" / "start")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"slurm/local/start failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return PARTITION


def _wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not after {timeout_s} s")
        time.sleep(0.2)


@pytest.fixture
def wait_until() -> Callable[[Callable[[], object], float, str], None]:
    """wait_until(predicate, timeout_s, what): polls until predicate() is true, else fails naming what."""
    return _wait_until


def _sweep_cell_key(overrides: list[str]) -> str:
    from hydra import compose, initialize_config_dir

    from sweeper.store.schema import cell_key
    from sweeper.grid.app_config import trainer_values

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("sweep", overrides=overrides)
    return cell_key(trainer_values(dict(cfg)))


@pytest.fixture
def sweep_cell_key() -> Callable[[list[str]], str]:
    """sweep_cell_key(overrides): the store key of the cell that sweep.py composes from them."""
    return _sweep_cell_key
