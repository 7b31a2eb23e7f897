"""The token files' cache: a folder per prepared dataset holding val.bin and train.bin (uint16 token
ids), prepared by one process under a file lock (the others wait, then read), written into a scratch
folder and published file by file with an atomic, durable rename, train.bin last.
"""
from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from filelock import FileLock, Timeout

from trainer.atomic import replace_durably

TOKEN_DTYPE = np.uint16
SPLITS = ("val", "train")  # publishing order: train.bin appears last, so its presence means "complete"
PROGRESS_EVERY_S = 10.0


class DataUnavailable(RuntimeError):
    """The data (or its tokenizer) is not here; the message says how to provide it."""


@dataclass(frozen=True)
class TokenData:
    name: str  # "<dataset>:<tokenizer>", e.g. "embedded:byte"
    train: np.ndarray  # 1-D memmap of token ids (uint16)
    val: np.ndarray
    vocab_size: int  # padded size the model uses


def default_data_dir() -> Path:
    return Path.home() / ".cache" / "mutransfer" / "data"


def is_prepared(folder: Path) -> bool:
    return all((folder / f"{split}.bin").is_file() for split in SPLITS)


def open_tokens(name: str, folder: Path, vocab_size: int) -> TokenData:
    return TokenData(name=name, train=_memmap(folder / "train.bin"), val=_memmap(folder / "val.bin"),
                     vocab_size=vocab_size)


def _memmap(path: Path) -> np.ndarray:
    size = path.stat().st_size
    if size == 0 or size % np.dtype(TOKEN_DTYPE).itemsize:
        raise DataUnavailable(f"{path} ({size} bytes) is not a non-empty file of uint16 tokens; "
                              f"delete {path.parent} and prepare it again")
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def exclusive(target: Path, label: str) -> Iterator[None]:
    """Holds the lock that serializes preparing ``target`` across processes (and hosts sharing it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.parent / f"{target.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"[data] waiting for another process preparing {label} in {target} ...")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def scratch_folder(target: Path) -> Path:
    """An empty folder beside ``target`` to write into; only the lock holder uses it."""
    scratch = target.parent / f"{target.name}.partial"
    shutil.rmtree(scratch, ignore_errors=True)  # left over by a process that died mid-way
    scratch.mkdir(parents=True)
    return scratch


def publish(scratch: Path, target: Path) -> None:
    """Moves the finished files into ``target``, each durable before its atomic rename, train.bin last."""
    target.mkdir(parents=True, exist_ok=True)
    splits = [f"{split}.bin" for split in SPLITS]
    for name in sorted(set(os.listdir(scratch)) - set(splits)) + splits:
        replace_durably(scratch / name, target / name)
    scratch.rmdir()


def write_stream(path: Path, chunks: Iterable[np.ndarray]) -> int:
    """Appends token chunks to ``path``; returns the token count."""
    count = 0
    with open(path, "wb") as out:
        for chunk in chunks:
            out.write(np.ascontiguousarray(chunk, dtype=TOKEN_DTYPE).tobytes())
            count += len(chunk)
    return count


def move_tail(stream: Path, tail: Path, keep: int) -> None:
    """Moves everything after the first ``keep`` tokens of ``stream`` into ``tail``."""
    itemsize = np.dtype(TOKEN_DTYPE).itemsize
    with open(stream, "r+b") as src, open(tail, "wb") as dst:
        src.seek(keep * itemsize)
        shutil.copyfileobj(src, dst, 16 << 20)
        src.truncate(keep * itemsize)
