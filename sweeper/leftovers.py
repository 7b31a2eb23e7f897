"""What a killed job leaves in a store, removed by the next sweep or status run.

A job killed between "record written" and "cleanup" leaves its checkpoint (GBs per cell at paper
scale) and its claim; a kill during an atomic write leaves a dot-named temp file. Nothing here
touches a cell that is being trained (a live claim), a checkpoint its run asked to keep, or a temp
file young enough to still be written.
"""
from __future__ import annotations

import time
from pathlib import Path

from trainer.config import CHECKPOINT

from .claims import CLAIMS, STALE_S, is_live, read_claim
from .record import DONE, KEY_PATTERN
from .result_store import ATTEMPTS, RECORDS, RUNS, record_status

KEEP = "keep_checkpoint"  # in a run dir: keep its checkpoint after the record (keep_checkpoints=true)


def _old(path: Path, now: float, stale_s: float) -> bool:
    try:
        return now - path.stat().st_mtime > stale_s
    except FileNotFoundError:
        return False


def clean(store: Path, stale_s: float = STALE_S) -> list[str]:
    """Removes the leftovers of dead jobs; returns one line per kind of thing removed."""
    store, now = Path(store), time.time()
    temps, claims, checkpoints, freed = 0, 0, 0, 0
    for folder in (store / RECORDS, store / CLAIMS, *(store / ATTEMPTS).glob("*"), *(store / RUNS).glob("*")):
        for tmp in folder.glob("*.tmp*") if folder.is_dir() else []:
            if _old(tmp, now, stale_s):
                tmp.unlink(missing_ok=True)
                temps += 1
    for path in (store / CLAIMS).glob("*.json"):
        claim = read_claim(store, path.stem) if KEY_PATTERN.fullmatch(path.stem) else None
        if claim is not None and not is_live(claim, stale_s, now):
            path.unlink(missing_ok=True)
            claims += 1
    for run in (store / RUNS).glob("*"):
        checkpoint = run / CHECKPOINT
        if (not KEY_PATTERN.fullmatch(run.name) or not checkpoint.is_file() or (run / KEEP).exists()
                or record_status(store, run.name) not in DONE):
            continue
        claim = read_claim(store, run.name)
        if claim is not None and is_live(claim, stale_s, now):
            continue
        freed += checkpoint.stat().st_size
        checkpoint.unlink(missing_ok=True)
        checkpoints += 1
    lines = []
    if checkpoints:
        lines.append(f"removed {checkpoints} leftover checkpoint(s) of finished cells "
                     f"({freed / 2**20:,.1f} MiB; keep_checkpoints=true keeps them)")
    if claims:
        lines.append(f"removed {claims} claim(s) of runs that died")
    if temps:
        lines.append(f"removed {temps} temp file(s) of interrupted writes")
    return lines
