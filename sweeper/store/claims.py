"""One trainer per cell: a cell being trained is claimed in the store, across sweeps and nodes.

``STORE/claims/<key>.json`` holds who trains the cell and what the cell is ({"host", "pid",
"job_id", "token", "claimed_at", "experiment", "config"}); its mtime is the owner's heartbeat, refreshed every ``HEARTBEAT_S`` while it trains.
A claim is made by hard-linking a complete temp file to that name: link() fails when the name
exists, atomically, on local disks and on NFS alike (O_EXCL is not reliable on old NFS clients).

A claim is live while its heartbeat is fresh and, on the same host, its process exists. Fresh means
within ``STALE_S`` either way: a heartbeat from the future (another host's clock, a touched file)
is as suspect as an old one. Ages are taken by the store filesystem's clock (``store_now``), the
one that stamps the heartbeats, so a node whose own clock runs ahead takes over no live claim. A
dead one (a killed job, a lost node) is taken over: under a second linked file, ``<key>.takeover``,
so that of two sweeps finding the same dead claim only one replaces it. A claim file that is no
claim (empty, garbage) is dead too: claims are linked complete, so nothing is still writing it.
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
from typing import Callable, Optional, Union

from .schema import KEY_PATTERN, check_key

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


@dataclass(frozen=True)
class BrokenClaim:
    """A claim file that cannot be read as a claim: dead, whoever wrote it."""

    path: Path
    reason: str


def claim_path(store: Path, key: str) -> Path:
    return Path(store) / CLAIMS / f"{check_key(key)}.json"


def inspect_claim(store: Path, key: str) -> Union[Claim, BrokenClaim, None]:
    """The cell's claim; BrokenClaim for a file that is none; None when there is no file (or it
    cannot be opened just now)."""
    path = claim_path(store, key)
    try:
        heartbeat = path.stat().st_mtime
        raw = path.read_bytes()
    except OSError:
        return None
    try:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        data = json.loads(raw.decode())
        return Claim(key, str(data["host"]), int(data["pid"]), data.get("job_id"), str(data["token"]),
                     heartbeat, data.get("experiment"), data.get("config"))
    except (ValueError, KeyError, TypeError) as err:
        return BrokenClaim(path, "an empty file" if not raw.strip() else f"no claim ({type(err).__name__}: {err})")


def read_claim(store: Path, key: str) -> Optional[Claim]:
    """The cell's claim, or None when there is none (or only a broken one, which is dead)."""
    claim = inspect_claim(store, key)
    return claim if isinstance(claim, Claim) else None


def _pid_exists(pid: int) -> bool:
    """A running process; a zombie (a killed trainer whose parent died too, not yet reaped) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no procfs (macOS) or gone in between
        return not Path("/proc").is_dir()


def store_now(store: Path) -> float:
    """The time by the clock that stamps the store's heartbeats: the mtime of a file made just now.
    On a shared filesystem that is the server's clock (NFS stamps with it), so a node whose clock is
    off still ages claims right; this node's clock where nothing can be written there."""
    probe = Path(store) / CLAIMS / f".now.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        probe.touch()
        return probe.stat().st_mtime
    except OSError:
        return time.time()
    finally:
        probe.unlink(missing_ok=True)


def is_live(claim: Claim, stale_s: float = STALE_S, now: Optional[float] = None) -> bool:
    """``now``: store_now of the claim's store (this node's clock when None)."""
    if abs((now if now is not None else time.time()) - claim.heartbeat) > stale_s:
        return False  # silent for too long, or stamped by a clock that is off by as much
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


def _take_over(store: Path, key: str, stale_s: float,
               still: Callable[[Union[Claim, BrokenClaim, None]], bool]) -> bool:
    """Removes the cell's claim file if it is ``still`` the dead one, unless another process is
    taking it over; True when this call removed it."""
    path = claim_path(store, key)
    lock = path.with_suffix(".takeover")
    if not _link_new(lock, {"host": socket.gethostname(), "pid": os.getpid()}):
        try:
            if store_now(store) - lock.stat().st_mtime > stale_s:  # a taker that died in these lines
                lock.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False
    try:
        if still(inspect_claim(store, key)):
            path.unlink(missing_ok=True)
            return True
        return False
    finally:
        lock.unlink(missing_ok=True)


def remove_dead(store: Path, dead: Union[Claim, BrokenClaim], stale_s: float = STALE_S) -> bool:
    """Removes ``dead`` (a claim that is not live, or a broken one) if it is still the cell's claim;
    True when this call removed it."""
    if isinstance(dead, BrokenClaim):
        return _take_over(store, dead.path.stem, stale_s, lambda current: isinstance(current, BrokenClaim))
    return _take_over(store, dead.key, stale_s,
                      lambda current: isinstance(current, Claim) and current.token == dead.token)


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
        other = inspect_claim(store, key)
        if other is None:  # released in between: try again
            continue
        if isinstance(other, BrokenClaim):
            if remove_dead(store, other, stale_s):
                print(f"removed the claim file {other.path}: {other.reason}, so no run owns it",
                      flush=True)
            continue
        if other.job_id is not None and other.job_id == job_id:  # this job, requeued on a node
            return Held(store, key, other.token), None
        if is_live(other, stale_s, store_now(store)):
            return None, other
        remove_dead(store, other, stale_s)
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
    now = store_now(store)
    claims = {}
    for path in folder.glob("*.json") if folder.is_dir() else []:
        if not KEY_PATTERN.fullmatch(path.stem):
            continue
        claim = read_claim(store, path.stem)
        if claim is not None and is_live(claim, stale_s, now):
            claims[claim.key] = claim
    return claims
