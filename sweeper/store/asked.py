"""What each sweep into a store was asked: its experiment and overrides (the experiment's default
grid, then the command line's), one small JSON file per sweep under ``STORE/asked/``, so that
status shows the grid that was asked for rather than the experiment's default. A store written
before these files existed has none: status falls back to the experiment's default grid."""
from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from pathlib import Path
from typing import Optional

from trainer.atomic import atomic_write_bytes

ASKED = "asked"


def write_asked(store: Path, experiment: Optional[str], overrides: list[str]) -> Path:
    now = dt.datetime.now(dt.timezone.utc)
    path = Path(store) / ASKED / f"{now:%Y%m%dT%H%M%S}-{os.getpid()}-{uuid.uuid4().hex[:6]}.json"
    atomic_write_bytes(path, json.dumps({"experiment": experiment, "overrides": list(overrides),
                                         "written_at": now.isoformat()}, indent=1).encode())
    return path


def read_asked(store: Path) -> list[dict]:
    """The sweeps' asks, oldest first; a file that cannot be read is left out (it only adds
    expected cells to status)."""
    asks = []
    for path in sorted((Path(store) / ASKED).glob("*.json")):
        try:
            ask = json.loads(path.read_text())
            asks.append({"experiment": ask.get("experiment"), "overrides": [str(o) for o in ask["overrides"]]})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return asks
