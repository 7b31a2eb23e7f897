"""The search's optuna journal (sweeper.search.rounds), repaired where a killed write tore it.

Optuna appends one JSON line per operation; a process killed mid-append (or a full disk) leaves a
line without its end, the next append is glued onto it, and optuna then fails on every read. The
log up to its first torn line is a consistent journal (a prefix of the operations), and whatever
was cut is answered again from the store, which the sweep never retrains: so the repair cuts there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional


def repair_journal(path: Path) -> Optional[str]:
    """Cuts ``path`` at its first torn line, under optuna's own lock; a line saying so, or None
    when it is whole (or absent)."""
    if not path.is_file():
        return None
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))  # the lock optuna's file backend appends under
    lock.acquire()
    try:
        data = path.read_bytes()
        whole = 0
        for line in data.splitlines(keepends=True):
            try:
                json.loads(line)
            except ValueError:
                break
            if not line.endswith(b"\n"):
                break
            whole += len(line)
        if whole == len(data):
            return None
        os.truncate(path, whole)
    finally:
        lock.release()
    lines = data[whole:].count(b"\n") + (not data.endswith(b"\n"))
    return (f"repaired {path}: cut {len(data) - whole} bytes ({lines} line(s)) from its first torn "
            f"line on (a write that was killed or ran out of space); the cells they held are answered "
            f"from the store, not trained again")
