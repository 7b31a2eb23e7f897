"""A dataset's train and val tokens (``load_tokens``): openwebtext as prepared, text datasets (embedded,
a folder) tokenized into the cache on first use."""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from .cache import (PROGRESS_EVERY_S, DataUnavailable, TokenData, default_data_dir, exclusive, is_prepared, log,
                    move_tail, open_tokens, publish, scratch_folder, write_stream)
from .openwebtext import OPENWEBTEXT_MISSING
from .tokenizer import bpe_fingerprint, encoder, resolve_tokenizer, vocab_size_of

VAL_FRACTION = 0.1
TEXT_SUFFIXES = (".txt", ".md", ".py")


@dataclass(frozen=True)
class _TextSource:
    label: str  # what the messages call it
    files: list[Path]
    cache_stem: str  # readable start of the cache folder's name
    fingerprint: list  # changes whenever the text may have changed


def load_tokens(dataset: str, tokenizer: str = "auto", data_dir: Optional[str] = None) -> TokenData:
    """Opens a dataset's train/val tokens, preparing and caching text datasets on first use."""
    tokenizer = resolve_tokenizer(dataset, tokenizer)
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    name = f"{dataset}:{tokenizer}"
    vocab = vocab_size_of(dataset, tokenizer)
    if dataset == "openwebtext":
        folder = root / "openwebtext"
        if not is_prepared(folder):
            raise DataUnavailable(OPENWEBTEXT_MISSING.format(folder=folder, data_dir=root))
        return open_tokens(name, folder, vocab)

    source = _embedded_source() if dataset == "embedded" else _folder_source(dataset)
    fingerprint = source.fingerprint + bpe_fingerprint(root, tokenizer)
    digest = hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()[:16]
    cache = root / f"{source.cache_stem}-{digest}-{tokenizer}"
    if not is_prepared(cache):
        with exclusive(cache, source.label):
            if not is_prepared(cache):  # another process may have finished while we waited
                _prepare_text(source, encoder(tokenizer, root), tokenizer, cache)
    return open_tokens(name, cache, vocab)



def data_problem(dataset: str, data_dir: Optional[str] = None) -> Optional[str]:
    """One line saying why a run of ``dataset`` could not start on this machine's data, or None.
    Reads only: it prepares and downloads nothing (a text dataset is prepared by its first run)."""
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if dataset == "openwebtext":
        folder = root / "openwebtext"
        if is_prepared(folder):
            return None
        return (f"dataset=openwebtext is not prepared: {folder} has no train.bin and val.bin; run "
                f"`python -m trainer.data prepare openwebtext --data-dir {root}` first (or --from FILE.jsonl)")
    if dataset == "embedded":
        return None
    try:
        _folder_source(dataset)
    except DataUnavailable as err:
        return str(err)
    return None

def _embedded_source() -> _TextSource:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"), key=lambda p: p.name)
    if not files:
        raise DataUnavailable(f"no *.py sources in this Python's standard library folder {stdlib}; "
                              "use dataset=<a folder of text files> instead")
    version = f"{sys.implementation.name}{platform.python_version()}"
    return _TextSource(
        label="embedded", files=files, cache_stem=f"embedded-{version}",
        fingerprint=[version] + [[p.name, p.stat().st_size] for p in files],
    )


def _folder_source(dataset: str) -> _TextSource:
    folder = Path(dataset).expanduser().resolve()
    if not folder.is_dir():
        raise DataUnavailable(
            f"dataset={dataset!r}: {folder} is not a folder. dataset must be 'embedded', 'openwebtext' "
            f"or a folder of {'/'.join(TEXT_SUFFIXES)} files"
        )
    files = sorted((p for p in folder.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file()),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise DataUnavailable(f"dataset={dataset!r}: no {'/'.join(TEXT_SUFFIXES)} files under {folder}")
    # mtimes too: an edit that keeps a file's size must not reuse the old cache
    stats = [[p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return _TextSource(label=str(folder), files=files, cache_stem=f"folder-{folder.name}",
                       fingerprint=[str(folder)] + stats)


def _prepare_text(source: _TextSource, encode: Callable[[bytes], np.ndarray], tokenizer: str,
                  cache: Path) -> None:
    total_bytes = sum(p.stat().st_size for p in source.files)
    log(f"[data] preparing {source.label} ({len(source.files)} files, {total_bytes / 1e6:.1f} MB, "
         f"tokenizer {tokenizer}) in {cache} ...")
    started = time.monotonic()

    def chunks() -> Iterator[np.ndarray]:
        last_report = started
        for i, path in enumerate(source.files, 1):
            yield encode(path.read_bytes())
            if time.monotonic() - last_report > PROGRESS_EVERY_S:
                last_report = time.monotonic()
                log(f"[data]   {i}/{len(source.files)} files tokenized")

    scratch = scratch_folder(cache)
    n_tokens = write_stream(scratch / "train.bin", chunks())
    if n_tokens < 2:
        shutil.rmtree(scratch)
        raise DataUnavailable(f"{source.label} holds {n_tokens} token(s): too little text to split "
                              "into train and val; add text files")
    n_val = max(1, round(n_tokens * VAL_FRACTION))
    move_tail(scratch / "train.bin", scratch / "val.bin", keep=n_tokens - n_val)
    meta = {"source": source.label, "files": len(source.files), "tokenizer": tokenizer,
            "train_tokens": n_tokens - n_val, "val_tokens": n_val, "val_fraction": VAL_FRACTION,
            "split": "val is the last val_fraction of the files' token stream, in file order"}
    (scratch / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    publish(scratch, cache)
    log(f"[data] prepared {source.label}: {n_tokens - n_val:,} train + {n_val:,} val tokens "
         f"in {time.monotonic() - started:.1f}s")
