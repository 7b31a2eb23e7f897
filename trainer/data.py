"""Token data for training: memory-mapped train/val token files, prepared once per data directory.

Datasets:
- ``embedded`` (default): the running Python's own top-level standard-library ``*.py`` sources, sorted
  by file name, byte-level tokens (vocab 256). Needs no download and no network.
- ``openwebtext``: GPT-2 BPE tokens in nanoGPT's layout, ``DATA_DIR/openwebtext/{train,val}.bin``
  (uint16), each document's ids followed by ``<|endoftext|>``, split as nanoGPT's
  ``data/openwebtext/prepare.py`` splits (``_split_documents``). Made by
  ``python -m trainer.data prepare openwebtext`` (downloads with the ``datasets`` package), by
  ``python -m trainer.data prepare openwebtext --from FILE.jsonl`` from local documents (one JSON object
  with a string ``"text"`` per line, as ``datasets``' ``to_json`` writes them), or copied from nanoGPT's
  output. Never downloaded by a run.
- any folder: every ``*.txt``, ``*.md`` and ``*.py`` file under it, sorted by relative path.

The GPT-2 BPE comes from ``DATA_DIR/gpt2.tiktoken`` where that file exists: tiktoken's file format (one
``base64(token bytes) rank`` per line), e.g. tiktoken's own ``r50k_base.tiktoken`` (``GPT2_BPE_URL``),
which holds GPT-2's ranks. That needs no network, and a smaller BPE in the same format works too (its
ranks below 50256, ``<|endoftext|>`` at GPT-2's 50256). Without the file, tiktoken loads ``gpt2`` from its
cache (``TIKTOKEN_CACHE_DIR``) or downloads it.

Text datasets (embedded and folders) are one token stream, the files joined in order (GPT-2 BPE appends
``<|endoftext|>`` after each file, as nanoGPT does; bytes have no spare id, so files are joined as they
are). The split is deterministic: the last ``VAL_FRACTION`` of the stream is val, the rest train.

Caches live in ``DATA_DIR/<name>-<hash>-<tokenizer>/``; the hash covers the source files' names and
sizes (plus the Python version for embedded, the folder path and mtimes for folders), so changed text
gets a new cache instead of a stale one. Many processes may start at once: one prepares under a file
lock, writing into a scratch folder and publishing each file by fsync + atomic rename (train.bin last);
the others wait for the lock and then read what it wrote.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import math
import os
import platform
import shutil
import sys
import sysconfig
import time
from array import array
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import tiktoken
import torch
from filelock import FileLock, Timeout
from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str  # GPT-2's special token and split pattern

from .atomic import replace_durably

VAL_FRACTION = 0.1
TEXT_SUFFIXES = (".txt", ".md", ".py")
TOKENIZERS = ("auto", "byte", "gpt2")
BYTE_VOCAB = 256
GPT2_VOCAB = 50257
GPT2_EOT = GPT2_VOCAB - 1  # <|endoftext|>, GPT-2's last id; a BPE file's ranks lie below it
GPT2_BPE_FILE = "gpt2.tiktoken"  # DATA_DIR/gpt2.tiktoken: read instead of tiktoken's download
# GPT-2's ranks in tiktoken's file format: tiktoken's r50k_base, whose ranks, pattern and <|endoftext|>
# are gpt2's
GPT2_BPE_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
# nanoGPT's openwebtext split (data/openwebtext/prepare.py): datasets' train_test_split(test_size, seed)
OPENWEBTEXT_VAL_FRACTION, OPENWEBTEXT_SPLIT_SEED = 0.0005, 2357
DOCUMENTS_PER_BATCH = 1024  # documents tokenized together, by num_proc threads
VOCAB_MULTIPLE = 64  # nanoGPT pads GPT-2's vocab to a multiple of 64 (50257 -> 50304) for faster matmuls
TOKEN_DTYPE = np.uint16
SPLITS = ("val", "train")  # publishing order: train.bin appears last, so its presence means "complete"
PROGRESS_EVERY_S = 10.0

OPENWEBTEXT_MISSING = (
    "openwebtext is not prepared: {folder} has no train.bin and val.bin.\n"
    "Provide them in one of three ways:\n"
    "  1. on a machine with network access and the `datasets` package (pip install datasets), run\n"
    "       python -m trainer.data prepare openwebtext --data-dir {data_dir}\n"
    "     and copy {folder} here if that machine is another one;\n"
    "  2. from local documents, one JSON object with a \"text\" per line, run\n"
    "       python -m trainer.data prepare openwebtext --from FILE.jsonl --data-dir {data_dir}\n"
    "  3. or copy nanoGPT's prepared train.bin and val.bin (data/openwebtext/prepare.py) into {folder}/.\n"
    "To try the trainer without them, use dataset=embedded."
)
GPT2_UNAVAILABLE = (
    "tiktoken could not load its GPT-2 BPE files ({error}); it downloads them on first use.\n"
    "Offline, either put GPT-2's BPE in tiktoken's file format at {bpe_file}, fetched elsewhere with\n"
    "    curl -o gpt2.tiktoken " + GPT2_BPE_URL + "\n"
    "or on a machine with network access run\n"
    "    TIKTOKEN_CACHE_DIR=DIR python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\"\n"
    "copy DIR here and set TIKTOKEN_CACHE_DIR=DIR; or use tokenizer=byte."
)
BPE_FILE_BAD = "{path}: {problem}. Replace it with GPT-2's BPE ({url}) or delete it to use tiktoken's own."


class DataUnavailable(RuntimeError):
    """The data (or its tokenizer) is not here; the message says how to provide it."""


@dataclass(frozen=True)
class TokenData:
    name: str  # "<dataset>:<tokenizer>", e.g. "embedded:byte"
    train: np.ndarray  # 1-D memmap of token ids (uint16)
    val: np.ndarray
    vocab_size: int  # padded size the model uses


@dataclass(frozen=True)
class _TextSource:
    label: str  # what the messages call it
    files: list[Path]
    cache_stem: str  # readable start of the cache folder's name
    fingerprint: list  # changes whenever the text may have changed


def default_data_dir() -> Path:
    return Path.home() / ".cache" / "mutransfer" / "data"


def resolve_tokenizer(dataset: str, tokenizer: str) -> str:
    """``auto`` means gpt2 for openwebtext (stored as GPT-2 tokens) and byte for text datasets."""
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer={tokenizer!r}: choose one of {', '.join(TOKENIZERS)}")
    if dataset == "openwebtext":
        if tokenizer == "byte":
            raise ValueError("openwebtext is stored as GPT-2 BPE tokens: use tokenizer=gpt2 (or auto)")
        return "gpt2"
    return "byte" if tokenizer == "auto" else tokenizer


def vocab_size_of(dataset: str, tokenizer: str) -> int:
    """The padded vocab size a model for this data uses; needs no data."""
    if resolve_tokenizer(dataset, tokenizer) == "byte":
        return BYTE_VOCAB
    return -(-GPT2_VOCAB // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def load_tokens(dataset: str, tokenizer: str = "auto", data_dir: Optional[str] = None) -> TokenData:
    """Opens a dataset's train/val tokens, preparing and caching text datasets on first use."""
    tokenizer = resolve_tokenizer(dataset, tokenizer)
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    name = f"{dataset}:{tokenizer}"
    vocab = vocab_size_of(dataset, tokenizer)
    if dataset == "openwebtext":
        folder = root / "openwebtext"
        if not _is_prepared(folder):
            raise DataUnavailable(OPENWEBTEXT_MISSING.format(folder=folder, data_dir=root))
        return _open(name, folder, vocab)

    source = _embedded_source() if dataset == "embedded" else _folder_source(dataset)
    fingerprint = source.fingerprint + _bpe_fingerprint(root, tokenizer)
    digest = hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()[:16]
    cache = root / f"{source.cache_stem}-{digest}-{tokenizer}"
    if not _is_prepared(cache):
        with _exclusive(cache, source.label):
            if not _is_prepared(cache):  # another process may have finished while we waited
                _prepare_text(source, _encoder(tokenizer, root), tokenizer, cache)
    return _open(name, cache, vocab)


def get_batch(tokens: np.ndarray, batch_size: int, seq_len: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows x (int64, CPU) and y = x shifted by one; starts come from ``generator`` (CPU),
    so a run is reproducible from its seed and resumable from the generator's saved state."""
    n_starts = len(tokens) - seq_len
    if n_starts < 1:
        raise ValueError(
            f"a token split of {len(tokens):,} tokens is shorter than seq_len + 1 = {seq_len + 1}: "
            "lower seq_len or use a dataset with more text"
        )
    starts = torch.randint(n_starts, (batch_size,), generator=generator).numpy()
    windows = np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)
    windows = torch.from_numpy(windows)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def fixed_batches(tokens: np.ndarray, n_batches: int, batch_size: int, seq_len: int,
                  seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same validation batches for every cell of a sweep: drawn from their own seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return [get_batch(tokens, batch_size, seq_len, generator) for _ in range(n_batches)]


# ---- sources -------------------------------------------------------------------------------------

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


# ---- tokenizers ----------------------------------------------------------------------------------

def _gpt2_encoding(root: Path) -> tiktoken.Encoding:
    """GPT-2's BPE: from ``root/gpt2.tiktoken`` where it exists, else tiktoken's (cached or downloaded)."""
    bpe_file = root / GPT2_BPE_FILE
    if bpe_file.exists():
        return tiktoken.Encoding(name=f"gpt2 from {bpe_file}", pat_str=r50k_pat_str,
                                 mergeable_ranks=_read_bpe_file(bpe_file),
                                 special_tokens={ENDOFTEXT: GPT2_EOT})
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as exc:  # tiktoken surfaces network failures as whatever its HTTP client raises
        raise DataUnavailable(GPT2_UNAVAILABLE.format(error=f"{type(exc).__name__}: {exc}",
                                                      bpe_file=bpe_file)) from exc


def _read_bpe_file(path: Path) -> dict[bytes, int]:
    """A tiktoken-format BPE file's ranks, checked so that every text encodes to ids below <|endoftext|>.

    Parsed here rather than by ``tiktoken.load.load_tiktoken_bpe``, which copies a local file into
    tiktoken's cache keyed by its path and then reads that copy: an edited file would go unseen."""
    def bad(problem: str) -> DataUnavailable:
        return DataUnavailable(BPE_FILE_BAD.format(path=path, problem=problem, url=GPT2_BPE_URL))

    ranks: dict[bytes, int] = {}
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            token, rank = base64.b64decode(token, validate=True), int(rank)
        except ValueError as exc:  # binascii.Error is one too
            raise bad(f"line {number} ({line[:60]!r}) is not 'base64(token bytes) rank' ({exc})") from exc
        if token in ranks:
            raise bad(f"line {number} repeats the token {token!r}")
        ranks[token] = rank
    if not ranks:
        raise bad("it holds no ranks")
    # a byte-level BPE encodes any text only if every single byte is a token
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise bad(f"{len(missing)} of the 256 single bytes have no rank (first: {missing[0]:#04x})")
    if len(set(ranks.values())) < len(ranks):
        raise bad("two tokens share a rank")
    if min(ranks.values()) < 0 or max(ranks.values()) >= GPT2_EOT:
        raise bad(f"its ranks run from {min(ranks.values())} to {max(ranks.values())}; GPT-2's lie in "
                  f"0..{GPT2_EOT - 1}, below <|endoftext|> ({GPT2_EOT}), so ids fit the model's vocab")
    return ranks


def _bpe_fingerprint(root: Path, tokenizer: str) -> list:
    """What a text cache depends on besides its text: the BPE file's contents, where one is used."""
    bpe_file = root / GPT2_BPE_FILE
    if tokenizer != "gpt2" or not bpe_file.exists():
        return []
    return [GPT2_BPE_FILE, hashlib.sha256(bpe_file.read_bytes()).hexdigest()]


def _encoder(tokenizer: str, root: Path) -> Callable[[bytes], np.ndarray]:
    if tokenizer == "byte":
        return lambda data: np.frombuffer(data, dtype=np.uint8).astype(TOKEN_DTYPE)
    encoding = _gpt2_encoding(root)

    def encode(data: bytes) -> np.ndarray:
        ids = encoding.encode_ordinary(data.decode("utf-8", errors="replace"))
        ids.append(encoding.eot_token)
        return np.asarray(ids, dtype=TOKEN_DTYPE)

    return encode


# ---- preparation and publishing ------------------------------------------------------------------

def _is_prepared(folder: Path) -> bool:
    return all((folder / f"{split}.bin").is_file() for split in SPLITS)


def _open(name: str, folder: Path, vocab_size: int) -> TokenData:
    return TokenData(name=name, train=_memmap(folder / "train.bin"), val=_memmap(folder / "val.bin"),
                     vocab_size=vocab_size)


def _memmap(path: Path) -> np.ndarray:
    size = path.stat().st_size
    if size == 0 or size % np.dtype(TOKEN_DTYPE).itemsize:
        raise DataUnavailable(f"{path} ({size} bytes) is not a non-empty file of uint16 tokens; "
                              f"delete {path.parent} and prepare it again")
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _exclusive(target: Path, label: str) -> Iterator[None]:
    """Holds the lock that serializes preparing ``target`` across processes (and hosts sharing it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.parent / f"{target.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _log(f"[data] waiting for another process preparing {label} in {target} ...")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _scratch(target: Path) -> Path:
    """An empty folder beside ``target`` to write into; only the lock holder uses it."""
    scratch = target.parent / f"{target.name}.partial"
    shutil.rmtree(scratch, ignore_errors=True)  # left over by a process that died mid-way
    scratch.mkdir(parents=True)
    return scratch


def _publish(scratch: Path, target: Path) -> None:
    """Moves the finished files into ``target``, each durable before its atomic rename, train.bin last."""
    target.mkdir(parents=True, exist_ok=True)
    splits = [f"{split}.bin" for split in SPLITS]
    for name in sorted(set(os.listdir(scratch)) - set(splits)) + splits:
        replace_durably(scratch / name, target / name)
    scratch.rmdir()


def _write_stream(path: Path, chunks: Iterable[np.ndarray]) -> int:
    """Appends token chunks to ``path``; returns the token count."""
    count = 0
    with open(path, "wb") as out:
        for chunk in chunks:
            out.write(np.ascontiguousarray(chunk, dtype=TOKEN_DTYPE).tobytes())
            count += len(chunk)
    return count


def _move_tail(stream: Path, tail: Path, keep: int) -> None:
    """Moves everything after the first ``keep`` tokens of ``stream`` into ``tail``."""
    itemsize = np.dtype(TOKEN_DTYPE).itemsize
    with open(stream, "r+b") as src, open(tail, "wb") as dst:
        src.seek(keep * itemsize)
        shutil.copyfileobj(src, dst, 16 << 20)
        src.truncate(keep * itemsize)


def _prepare_text(source: _TextSource, encode: Callable[[bytes], np.ndarray], tokenizer: str,
                  cache: Path) -> None:
    total_bytes = sum(p.stat().st_size for p in source.files)
    _log(f"[data] preparing {source.label} ({len(source.files)} files, {total_bytes / 1e6:.1f} MB, "
         f"tokenizer {tokenizer}) in {cache} ...")
    started = time.monotonic()

    def chunks() -> Iterator[np.ndarray]:
        last_report = started
        for i, path in enumerate(source.files, 1):
            yield encode(path.read_bytes())
            if time.monotonic() - last_report > PROGRESS_EVERY_S:
                last_report = time.monotonic()
                _log(f"[data]   {i}/{len(source.files)} files tokenized")

    scratch = _scratch(cache)
    n_tokens = _write_stream(scratch / "train.bin", chunks())
    if n_tokens < 2:
        shutil.rmtree(scratch)
        raise DataUnavailable(f"{source.label} holds {n_tokens} token(s): too little text to split "
                              "into train and val; add text files")
    n_val = max(1, round(n_tokens * VAL_FRACTION))
    _move_tail(scratch / "train.bin", scratch / "val.bin", keep=n_tokens - n_val)
    meta = {"source": source.label, "files": len(source.files), "tokenizer": tokenizer,
            "train_tokens": n_tokens - n_val, "val_tokens": n_val, "val_fraction": VAL_FRACTION,
            "split": "val is the last val_fraction of the files' token stream, in file order"}
    (scratch / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    _publish(scratch, cache)
    _log(f"[data] prepared {source.label}: {n_tokens - n_val:,} train + {n_val:,} val tokens "
         f"in {time.monotonic() - started:.1f}s")


class _JsonLines(Sequence):
    """The ``"text"`` of each non-blank line of a JSON Lines file, read when asked for: only the lines'
    offsets stay in memory, so a corpus larger than memory can be prepared. The file is opened on the
    first read and kept open for the next; use it as a context manager (or call close) to close it."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None
        self._offsets, self._numbers = array("q"), array("q")
        offset = 0
        with open(path, "rb") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    self._offsets.append(offset)
                    self._numbers.append(number)
                offset += len(line)

    def __len__(self) -> int:
        return len(self._offsets)

    def __enter__(self) -> "_JsonLines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getitem__(self, i: int) -> str:
        if self._file is None:
            self._file = open(self.path, "rb")
        self._file.seek(self._offsets[i])
        line = self._file.readline()
        try:
            text = json.loads(line)["text"]
            if not isinstance(text, str):
                raise TypeError(f"its text is a {type(text).__name__}")
        except (ValueError, TypeError, KeyError) as exc:
            raise DataUnavailable(f"{self.path} line {self._numbers[i]}: not a JSON object with a string "
                                  f"\"text\" ({line[:60]!r}: {exc!r})") from exc
        return text


class _DatasetTexts(Sequence):
    """A Hugging Face dataset's ``"text"`` column, row by row (the whole column would not fit memory)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> str:
        return self.dataset[int(i)]["text"]


def _split_documents(n: int) -> dict[str, np.ndarray]:
    """Document indices of val and train, in writing order, as nanoGPT's openwebtext split makes them:
    ``datasets``' ``train_test_split(test_size=0.0005, seed=2357, shuffle=True)`` permutes the rows with
    ``np.random.default_rng(seed)``, takes the first ceil(0.0005 n) as test (nanoGPT's val) and the rest as
    train, each kept in permutation order."""
    order = np.random.default_rng(OPENWEBTEXT_SPLIT_SEED).permutation(n)
    n_val = math.ceil(OPENWEBTEXT_VAL_FRACTION * n)
    return {"val": order[:n_val], "train": order[n_val:]}


def _gpt2_chunks(documents: Sequence[str], indices: np.ndarray, encoding: tiktoken.Encoding,
                 threads: int, split: str) -> Iterator[np.ndarray]:
    """The ids of the documents at ``indices``, each followed by <|endoftext|>, a batch at a time."""
    last_report = time.monotonic()
    for first in range(0, len(indices), DOCUMENTS_PER_BATCH):
        texts = [documents[int(i)] for i in indices[first:first + DOCUMENTS_PER_BATCH]]
        ids = encoding.encode_ordinary_batch(texts, num_threads=threads)
        for doc in ids:
            doc.append(encoding.eot_token)
        yield np.fromiter(itertools.chain.from_iterable(ids), dtype=TOKEN_DTYPE)
        if time.monotonic() - last_report > PROGRESS_EVERY_S:
            last_report = time.monotonic()
            _log(f"[data]   {split}: {first + len(texts):,}/{len(indices):,} documents tokenized")


def _write_gpt2_documents(documents: Sequence[str], label: str, encoding: tiktoken.Encoding,
                          folder: Path, threads: int) -> None:
    """Documents -> GPT-2 ids, each document's followed by <|endoftext|> -> ``folder``'s val.bin and
    train.bin (uint16), split by ``_split_documents``. Any sized sequence of strings will do (a list,
    ``_JsonLines``, ``_DatasetTexts``): the split needs the count, and reads documents out of order."""
    if len(documents) < 2:
        raise DataUnavailable(f"{label} holds {len(documents)} document(s): openwebtext needs at least 2, "
                              "one of them for val")
    _log(f"[data] preparing openwebtext from {label} ({len(documents):,} documents, {encoding.name}) "
         f"in {folder} ...")
    started = time.monotonic()
    scratch = _scratch(folder)
    meta = {"source": label, "documents": len(documents), "bpe": encoding.name,
            "split": f"datasets' train_test_split(test_size={OPENWEBTEXT_VAL_FRACTION}, "
                     f"seed={OPENWEBTEXT_SPLIT_SEED}), as nanoGPT's data/openwebtext/prepare.py"}
    for split, indices in _split_documents(len(documents)).items():
        meta[f"{split}_documents"] = len(indices)
        meta[f"{split}_tokens"] = _write_stream(
            scratch / f"{split}.bin", _gpt2_chunks(documents, indices, encoding, threads, split))
    (scratch / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    _publish(scratch, folder)
    _log(f"[data] prepared openwebtext: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
         f"in {time.monotonic() - started:.1f}s")


def _import_datasets(folder: Path, root: Path):
    try:
        import datasets  # optional: only the download needs it
    except ImportError as exc:
        raise DataUnavailable(
            "downloading openwebtext needs the `datasets` package (pip install datasets) and network "
            "access.\n" + OPENWEBTEXT_MISSING.format(folder=folder, data_dir=root)) from exc
    return datasets


def _download_openwebtext(datasets, num_proc: int, folder: Path, root: Path) -> _DatasetTexts:
    _log("[data] downloading openwebtext (~54 GB; takes hours) ...")
    try:
        return _DatasetTexts(datasets.load_dataset("openwebtext", num_proc=num_proc)["train"])
    except Exception as exc:
        raise DataUnavailable(f"downloading openwebtext failed ({type(exc).__name__}: {exc}).\n"
                              + OPENWEBTEXT_MISSING.format(folder=folder, data_dir=root)) from exc


def prepare_openwebtext(data_dir: Optional[str] = None, num_proc: int = 8,
                        source: Optional[str] = None) -> TokenData:
    """Writes ``DATA_DIR/openwebtext/{train,val}.bin`` once: from ``source``, a JSON Lines file of
    documents, or else from openwebtext downloaded with Hugging Face ``datasets``."""
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    folder = root / "openwebtext"
    if source is not None and not Path(source).is_file():
        raise DataUnavailable(f"--from {source}: no such file (a JSON Lines file of documents)")
    if not _is_prepared(folder):
        datasets = _import_datasets(folder, root) if source is None else None
        with _exclusive(folder, "openwebtext"):
            if not _is_prepared(folder):
                encoding = _gpt2_encoding(root)  # fail early, before reading or downloading documents
                if source is not None:
                    path = Path(source).resolve()
                    with _JsonLines(path) as documents:
                        _write_gpt2_documents(documents, str(path), encoding, folder, num_proc)
                else:
                    documents = _download_openwebtext(datasets, num_proc, folder, root)
                    _write_gpt2_documents(documents, "openwebtext (datasets)", encoding, folder, num_proc)
    elif source is not None:
        _log(f"[data] {folder} is prepared already; delete it to prepare it from {source}")
    return load_tokens("openwebtext", "gpt2", str(root))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.data",
                                     description="Prepare token data once, ahead of a sweep.")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="tokenize a dataset into DATA_DIR and print where")
    prepare.add_argument("dataset", nargs="?", default="embedded",
                         help="embedded (default), openwebtext, or a folder of .txt/.md/.py files")
    prepare.add_argument("--data-dir", default=None, help=f"cache folder (default {default_data_dir()})")
    prepare.add_argument("--tokenizer", default="auto", choices=TOKENIZERS)
    prepare.add_argument("--num-proc", type=int, default=min(8, os.cpu_count() or 1),
                         help="processes for openwebtext's download, threads for its tokenization")
    prepare.add_argument("--from", dest="source", metavar="FILE.jsonl", default=None,
                         help="openwebtext only: prepare it from these local documents, one JSON object "
                              "with a string \"text\" per line, instead of downloading it")
    args = parser.parse_args(argv)
    if args.source is not None and args.dataset != "openwebtext":
        parser.error("--from prepares openwebtext; a folder dataset is its own source")
    try:
        if args.dataset == "openwebtext":
            resolve_tokenizer(args.dataset, args.tokenizer)
            data = prepare_openwebtext(args.data_dir, args.num_proc, args.source)
        else:
            data = load_tokens(args.dataset, args.tokenizer, args.data_dir)
    except (DataUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{data.name}: {len(data.train):,} train + {len(data.val):,} val tokens, vocab {data.vocab_size}")
    print(f"  train: {data.train.filename}\n  val:   {data.val.filename}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
