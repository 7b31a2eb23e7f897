"""The one atomic write of the project (checkpoints, the data cache, the store's records, index and
queue entries): a reader sees the old file or the new one, never a torn one, and after a crash the
new one is on disk or absent.

The temp file sits beside its target (a rename is atomic within one filesystem) under a name no other
process writes, on any host of a shared filesystem: host, pid and a random part.
"""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import BinaryIO, Callable


def temp_path(path: Path) -> Path:
    """A hidden name beside ``path``, unique across hosts and processes; ends in .tmp, so a sweep's
    cleanup (sweeper.store.leftovers) recognises what a killed writer left."""
    return path.parent / f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def fsync_dir(path: Path) -> None:
    """Makes a rename in ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(source: Path, target: Path) -> None:
    """Renames the finished file ``source`` over ``target``: its data on disk first, then the rename."""
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(source, target)
    fsync_dir(target.parent)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Creates or replaces ``path`` with what ``write`` writes into the open (binary) file it is given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))
