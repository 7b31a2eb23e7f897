"""openwebtext in nanoGPT's layout: GPT-2 ids of each document followed by <|endoftext|>, split as
nanoGPT's data/openwebtext/prepare.py splits, from local JSON Lines documents or a download."""
from __future__ import annotations

import itertools
import json
import math
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import tiktoken

from .cache import (PROGRESS_EVERY_S, TOKEN_DTYPE, DataUnavailable, TokenData, default_data_dir, exclusive,
                    is_prepared, log, open_tokens, publish, scratch_folder, write_stream)
from .tokenizer import gpt2_encoding, vocab_size_of

# nanoGPT's openwebtext split (data/openwebtext/prepare.py): datasets' train_test_split(test_size, seed)
OPENWEBTEXT_VAL_FRACTION, OPENWEBTEXT_SPLIT_SEED = 0.0005, 2357
DOCUMENTS_PER_BATCH = 1024  # documents tokenized together, by num_proc threads
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
            log(f"[data]   {split}: {first + len(texts):,}/{len(indices):,} documents tokenized")


def _write_gpt2_documents(documents: Sequence[str], label: str, encoding: tiktoken.Encoding,
                          folder: Path, threads: int) -> None:
    """Documents -> GPT-2 ids, each document's followed by <|endoftext|> -> ``folder``'s val.bin and
    train.bin (uint16), split by ``_split_documents``. Any sized sequence of strings will do (a list,
    ``_JsonLines``, ``_DatasetTexts``): the split needs the count, and reads documents out of order."""
    if len(documents) < 2:
        raise DataUnavailable(f"{label} holds {len(documents)} document(s): openwebtext needs at least 2, "
                              "one of them for val")
    log(f"[data] preparing openwebtext from {label} ({len(documents):,} documents, {encoding.name}) "
         f"in {folder} ...")
    started = time.monotonic()
    scratch = scratch_folder(folder)
    meta = {"source": label, "documents": len(documents), "bpe": encoding.name,
            "split": f"datasets' train_test_split(test_size={OPENWEBTEXT_VAL_FRACTION}, "
                     f"seed={OPENWEBTEXT_SPLIT_SEED}), as nanoGPT's data/openwebtext/prepare.py"}
    for split, indices in _split_documents(len(documents)).items():
        meta[f"{split}_documents"] = len(indices)
        meta[f"{split}_tokens"] = write_stream(
            scratch / f"{split}.bin", _gpt2_chunks(documents, indices, encoding, threads, split))
    (scratch / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    publish(scratch, folder)
    log(f"[data] prepared openwebtext: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
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
    log("[data] downloading openwebtext (~54 GB; takes hours) ...")
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
    if not is_prepared(folder):
        datasets = _import_datasets(folder, root) if source is None else None
        with exclusive(folder, "openwebtext"):
            if not is_prepared(folder):
                encoding = gpt2_encoding(root)  # fail early, before reading or downloading documents
                if source is not None:
                    path = Path(source).resolve()
                    with _JsonLines(path) as documents:
                        _write_gpt2_documents(documents, str(path), encoding, folder, num_proc)
                else:
                    documents = _download_openwebtext(datasets, num_proc, folder, root)
                    _write_gpt2_documents(documents, "openwebtext (datasets)", encoding, folder, num_proc)
    elif source is not None:
        log(f"[data] {folder} is prepared already; delete it to prepare it from {source}")
    return open_tokens("openwebtext:gpt2", folder, vocab_size_of("openwebtext", "gpt2"))
