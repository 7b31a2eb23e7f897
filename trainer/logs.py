"""The last lines of a log: what a failed cell's record and message quote."""
from __future__ import annotations

import os
from pathlib import Path

TAIL_LINES = 25
_TAIL_BYTES = 64 * 1024  # read from the end: a long run's log can be large


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file; "" when it is missing."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - _TAIL_BYTES))
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
