"""The tokenizers: bytes (vocab 256) and GPT-2's BPE (tiktoken), read from DATA_DIR/gpt2.tiktoken where
that file exists, else tiktoken's own (cached or downloaded)."""
from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import tiktoken
from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str  # GPT-2's special token and split pattern

from .cache import TOKEN_DTYPE, DataUnavailable

TOKENIZERS = ("auto", "byte", "gpt2")
BYTE_VOCAB = 256
GPT2_VOCAB = 50257
GPT2_EOT = GPT2_VOCAB - 1  # <|endoftext|>, GPT-2's last id; a BPE file's ranks lie below it
GPT2_BPE_FILE = "gpt2.tiktoken"  # DATA_DIR/gpt2.tiktoken: read instead of tiktoken's download
# GPT-2's ranks in tiktoken's file format: tiktoken's r50k_base, whose ranks, pattern and <|endoftext|>
# are gpt2's
GPT2_BPE_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
VOCAB_MULTIPLE = 64  # nanoGPT pads GPT-2's vocab to a multiple of 64 (50257 -> 50304) for faster matmuls

GPT2_UNAVAILABLE = (
    "tiktoken could not load its GPT-2 BPE files ({error}); it downloads them on first use.\n"
    "Offline, either put GPT-2's BPE in tiktoken's file format at {bpe_file}, fetched elsewhere with\n"
    "    curl -o gpt2.tiktoken " + GPT2_BPE_URL + "\n"
    "or on a machine with network access run\n"
    "    TIKTOKEN_CACHE_DIR=DIR python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\"\n"
    "copy DIR here and set TIKTOKEN_CACHE_DIR=DIR; or use tokenizer=byte."
)
BPE_FILE_BAD = "{path}: {problem}. Replace it with GPT-2's BPE ({url}) or delete it to use tiktoken's own."


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


def gpt2_encoding(root: Path) -> tiktoken.Encoding:
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


def bpe_fingerprint(root: Path, tokenizer: str) -> list:
    """What a text cache depends on besides its text: the BPE file's contents, where one is used."""
    bpe_file = root / GPT2_BPE_FILE
    if tokenizer != "gpt2" or not bpe_file.exists():
        return []
    return [GPT2_BPE_FILE, hashlib.sha256(bpe_file.read_bytes()).hexdigest()]


def encoder(tokenizer: str, root: Path) -> Callable[[bytes], np.ndarray]:
    if tokenizer == "byte":
        return lambda data: np.frombuffer(data, dtype=np.uint8).astype(TOKEN_DTYPE)
    encoding = gpt2_encoding(root)

    def encode(data: bytes) -> np.ndarray:
        ids = encoding.encode_ordinary(data.decode("utf-8", errors="replace"))
        ids.append(encoding.eot_token)
        return np.asarray(ids, dtype=TOKEN_DTYPE)

    return encode
