"""The layers of shared/DESIGN.md and the lint rules, as the contracts in pyproject.toml declare them:
a change that imports across a layer, adds a module cycle or an unused import fails here, naming
the contract or the rule it breaks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(tool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    exe = BIN / tool
    if not exe.exists():
        pytest.fail(f"{tool} is not installed next to {sys.executable}: pip install -e '.[test]'")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    done = _run("lint-imports", "--no-cache")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_ruff_passes():
    done = _run("ruff", "check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_an_import_across_a_layer_fails_with_the_contracts_name(tmp_path):
    """A copy of the packages where the store imports the search breaks the layers contract, and
    lint-imports names it."""
    for name in ("trainer", "sweeper", "analysis", "hydra_plugins"):
        subprocess.run(["cp", "-r", str(ROOT / name), str(tmp_path / name)], check=True)
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    records = tmp_path / "sweeper" / "store" / "records.py"
    records.write_text(records.read_text() + "\nfrom sweeper.search.transfer import BUDGET  # noqa: E402\n")
    env_path = f"{tmp_path}"
    done = subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]
    assert "layers: hydra plugin > sweeper.search" in done.stdout and "BROKEN" in done.stdout
    assert "sweeper.store.records -> sweeper.search.transfer" in done.stdout
