"""One trainer per cell: a cell being trained is claimed in the store, across sweeps and nodes.

``STORE/claims/<key>.json`` holds who trains the cell and what the cell is ({"host", "pid",
"job_id", "token", "claimed_at", "experiment", "config"}); its mtime is the owner's heartbeat, refreshed every ``HEARTBEAT_S`` while it trains.
A claim is made by hard-linking a complete temp file to that name: link() fails when the name
exists, atomically, on local disks and on NFS alike (O_EXCL is not reliable on old NFS clients).

A claim is live while its heartbeat is fresh and, on the same host, its process exists. A dead one
(a killed job, a lost node) is taken over: under a second linked file, ``<key>.takeover``, so that
of two sweeps finding the same dead claim only one replaces it.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .record import KEY_PATTERN, check_key

CLAIMS = "claims"
HEARTBEAT_S = 30.0
STALE_S = 300.0  # ten missed heartbeats: the owner is gone (or its filesystem is)


@dataclass(frozen=True)
class Claim:
    key: str
    host: str
    pid: int
    job_id: Optional[str]
    token: str
    heartbeat: float  # time.time() of the last heartbeat
    experiment: Optional[str] = None
    config: Optional[dict] = None  # the cell's result settings, for status

    def owner(self) -> str:
        job = f", Slurm job {self.job_id}" if self.job_id else ""
        return f"{self.host} pid {self.pid}{job}"


def claim_path(store: Path, key: str) -> Path:
    return Path(store) / CLAIMS / f"{check_key(key)}.json"


def read_claim(store: Path, key: str) -> Optional[Claim]:
    """The cell's claim, or None when there is none (or only a torn one, which counts as none)."""
    path = claim_path(store, key)
    try:
        heartbeat = path.stat().st_mtime
        data = json.loads(path.read_text())
        return Claim(key, str(data["host"]), int(data["pid"]), data.get("job_id"), str(data["token"]),
                     heartbeat, data.get("experiment"), data.get("config"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def is_live(claim: Claim, stale_s: float = STALE_S, now: Optional[float] = None) -> bool:
    if (now if now is not None else time.time()) - claim.heartbeat > stale_s:
        return False
    return claim.host != socket.gethostname() or _pid_exists(claim.pid)


def _link_new(path: Path, data: dict) -> bool:
    """Creates ``path`` with ``data`` unless it exists; True when this call created it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(data))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(store: Path, dead: Claim, stale_s: float) -> None:
    """Removes ``dead`` if it is still the cell's claim, unless another process is taking it over."""
    path = claim_path(store, dead.key)
    lock = path.with_suffix(".takeover")
    if not _link_new(lock, {"host": socket.gethostname(), "pid": os.getpid()}):
        try:
            if time.time() - lock.stat().st_mtime > stale_s:  # a taker that died in these lines
                lock.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return
    try:
        current = read_claim(store, dead.key)
        if current is not None and current.token == dead.token:
            path.unlink(missing_ok=True)
    finally:
        lock.unlink(missing_ok=True)


def try_claim(store: Path, key: str, job_id: Optional[str] = None, experiment: Optional[str] = None,
              config: Optional[dict] = None,
              stale_s: float = STALE_S) -> tuple[Optional["Held"], Optional[Claim]]:
    """(held, None) when this process now trains the cell, or (None, the live claim of its owner)."""
    me = {"host": socket.gethostname(), "pid": os.getpid(), "job_id": job_id,
          "token": uuid.uuid4().hex, "claimed_at": time.time(), "experiment": experiment,
          "config": config}
    for _ in range(3):
        if _link_new(claim_path(store, key), me):
            return Held(store, key, me["token"]), None
        other = read_claim(store, key)
        if other is None:  # released in between: try again
            continue
        if other.job_id is not None and other.job_id == job_id:  # this job, requeued on a node
            return Held(store, key, other.token), None
        if is_live(other, stale_s):
            return None, other
        _take_over(store, other, stale_s)
    other = read_claim(store, key)
    return None, other


class Held:
    """A claim this process holds: a heartbeat thread keeps it fresh until ``release``."""

    def __init__(self, store: Path, key: str, token: str, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.path = claim_path(store, key)
        self.store, self.key, self.token = store, key, token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True,
                                        name=f"claim-{key}")
        self._thread.start()

    def _beat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                os.utime(self.path)
            except OSError:  # gone or unreachable for a moment: the next beat tries again
                pass

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        current = read_claim(self.store, self.key)
        if current is not None and current.token == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Held":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def live_claims(store: Path, stale_s: float = STALE_S) -> dict[str, Claim]:
    """Cell key -> the live claim on it, for every claimed cell of the store."""
    folder = Path(store) / CLAIMS
    claims = {}
    for path in folder.glob("*.json") if folder.is_dir() else []:
        if not KEY_PATTERN.fullmatch(path.stem):
            continue
        claim = read_claim(store, path.stem)
        if claim is not None and is_live(claim, stale_s):
            claims[claim.key] = claim
    return claims
