"""Every command that reads a store says the same one line, with the same exit code, for a store
it cannot read (missing, a file, empty, not a store), and writes nothing into what it was given."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from analysis.ingest import ingest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
COMMANDS = {
    "status": ["sweeper", "status", "--store"],
    "replay": ["sweeper", "replay", "--oracle"],
    "report": ["analysis", "report", "--out", "{out}", "--store"],
    "next": ["analysis", "next", "--store"],
}


def snapshot(path: Path) -> dict:
    if path.is_file():
        return {path: path.read_bytes()}
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    ingest(FIXTURES / "paper_tables_12_13.csv", root / "store")
    (root / "empty").mkdir()
    (root / "random").mkdir()
    (root / "random" / "notes.txt").write_text("not a store")
    (root / "file").write_text("not a store")
    return root


@pytest.mark.parametrize("where, says", [
    ("missing", "store {path} does not exist: pass the directory given as store="),
    ("file", "store {path} is a file, not a store directory"),
    ("empty", "store {path} holds no records yet"),
    ("random", "{path} is not a result store: it has no records/ folder;"),
    ("store/records", "{path} is not a result store: it has no records/ folder (it looks like the "
                      "records/ folder of store {root}/store)"),
])
def test_every_store_command_says_the_same_line_and_writes_nothing(stores, where, says):
    path = stores / where
    before = snapshot(path) if path.exists() else None
    lines = set()
    for name, command in COMMANDS.items():
        args = [a.format(out=stores / "out") for a in command] + [str(path)]
        run = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 2, (name, run.stderr)
        assert run.stdout == "" and len(run.stderr.strip().splitlines()) == 1, (name, run.stderr)
        lines.add(run.stderr.strip())
    assert len(lines) == 1, lines  # the same line, whatever the command
    line = lines.pop()
    assert says.format(path=path, root=stores) in line, line
    assert (snapshot(path) if path.exists() else None) == before  # nothing written, no index cache
    assert not (stores / "out").exists()


def test_status_only_reads_and_clean_says_what_it_removes(tmp_path):
    """status leaves a store's files as they were (its index cache aside); `sweeper clean` removes a
    finished cell's leftover checkpoint and an old temp file, a line each."""
    import os
    import time

    from trainer.config import CHECKPOINT

    store = tmp_path / "store"
    (record,) = ingest(FIXTURES / "paper_tables_12_13.csv", store)[:1]
    checkpoint = store / "runs" / record["key"] / CHECKPOINT
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"\0" * 2**20)
    temp = store / "records" / f".{record['key']}.json.123.abcd.tmp"
    temp.write_text("{")
    old = time.time() - 7 * 24 * 3600
    os.utime(temp, (old, old))

    def files():
        return {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and ".cache" not in p.parts}

    before = files()
    status = subprocess.run([sys.executable, "-m", "sweeper", "status", "--store", str(store)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert files() == before
    cleaned = subprocess.run([sys.executable, "-m", "sweeper", "clean", "--store", str(store)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert cleaned.returncode == 0, cleaned.stderr
    assert "removed 1 leftover checkpoint(s) of finished cells (1.0 MiB" in cleaned.stdout
    assert "removed 1 temp file(s) of interrupted writes" in cleaned.stdout
    assert not checkpoint.exists() and not temp.exists()
    again = subprocess.run([sys.executable, "-m", "sweeper", "clean", "--store", str(store)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert again.stdout.strip() == "nothing to clean"
