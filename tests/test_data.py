"""trainer.data (the package): prepared, cached, shared token files and the batches drawn from them."""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import torch

from trainer.config import TrainConfig
from trainer.data.batches import fixed_batches, get_batch
from trainer.data.cache import DataUnavailable
from trainer.data.openwebtext import prepare_openwebtext
from trainer.data.prepare import main
from trainer.data.tokenizer import vocab_size_of
from trainer.data.tokens import load_tokens
from trainer.train import run

REPO = Path(__file__).resolve().parents[1]
# A proxy on a closed local port: any download attempt fails at once, without touching the network.
NO_NETWORK = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
              "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
              "NO_PROXY": "", "no_proxy": ""}


def stdlib_sources() -> bytes:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return b"".join(p.read_bytes() for p in sorted(stdlib.glob("*.py"), key=lambda p: p.name))


def as_bytes(tokens: np.ndarray) -> bytes:
    return np.asarray(tokens, dtype=np.uint8).tobytes()


def digest(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(tokens).tobytes()).hexdigest()


def child_env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    return load_tokens("embedded", data_dir=str(tmp_path_factory.mktemp("data")))


def test_embedded_is_the_stdlib_sources_split_into_train_then_val(embedded):
    assert embedded.vocab_size == 256
    for split in (embedded.train, embedded.val):
        assert isinstance(split, np.memmap) and split.dtype == np.uint16 and split.ndim == 1
        assert int(split.max()) < 256
    # train and val are consecutive, non-overlapping pieces of the sorted sources' byte stream
    assert as_bytes(embedded.train) + as_bytes(embedded.val) == stdlib_sources()
    assert 0.05 < len(embedded.val) / (len(embedded.train) + len(embedded.val)) < 0.15
    val_text = as_bytes(embedded.val).decode("utf-8")
    assert "def " in val_text and "import " in val_text


def test_second_load_reuses_the_cache(tmp_path, capsys):
    first = load_tokens("embedded", data_dir=str(tmp_path))
    log = capsys.readouterr().err
    assert "[data] preparing embedded" in log and f"{len(first.train):,} train" in log
    files = [Path(first.train.filename), Path(first.val.filename)]
    mtimes = [f.stat().st_mtime_ns for f in files]

    second = load_tokens("embedded", data_dir=str(tmp_path))
    assert capsys.readouterr().err == ""
    assert [Path(second.train.filename), Path(second.val.filename)] == files
    assert [f.stat().st_mtime_ns for f in files] == mtimes


CHILD = """
import hashlib, sys, time
from pathlib import Path
from trainer.data.tokens import load_tokens
ready, go, data_dir = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ready.touch()
while not go.exists():
    time.sleep(0.005)
data = load_tokens("embedded", data_dir=data_dir)
print(data.train.filename, *(hashlib.sha256(s.tobytes()).hexdigest() for s in (data.train, data.val)))
"""


def test_processes_preparing_at_once_share_one_preparation(tmp_path, embedded):
    data_dir, n = tmp_path / "data", 4
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / f"ready{i}"),
                                  str(tmp_path / "go"), str(data_dir)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
                for i in range(n)]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in range(n)):  # all imported: start together
            assert time.monotonic() < deadline and all(c.poll() is None for c in children)
            time.sleep(0.05)
        (tmp_path / "go").touch()
        outputs = [c.communicate(timeout=120) for c in children]
    finally:
        for c in children:
            c.kill()
    assert [c.returncode for c in children] == [0] * n, [err for _, err in outputs]
    assert sum("[data] preparing embedded" in err for _, err in outputs) == 1
    seen = {out.strip() for out, _ in outputs}
    assert len(seen) == 1
    filename, train_hash, val_hash = seen.pop().split()
    assert Path(filename).parent.parent == data_dir
    # the same files a separate, earlier preparation made: deterministic
    assert (train_hash, val_hash) == (digest(embedded.train), digest(embedded.val))


def test_get_batch_windows_are_shifted_and_reproducible(embedded):
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(tokens, 8, 32, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    assert x.device.type == "cpu"
    starts = x[:, :1]
    assert torch.equal(x, starts + torch.arange(32)) and torch.equal(y, x + 1)

    again = get_batch(tokens, 8, 32, torch.Generator().manual_seed(3))
    other = get_batch(tokens, 8, 32, torch.Generator().manual_seed(4))
    assert torch.equal(again[0], x) and not torch.equal(other[0], x)

    # a resumed run continues from the saved generator state
    generator = torch.Generator().manual_seed(5)
    get_batch(embedded.train, 4, 64, generator)
    state = generator.get_state()
    expected = get_batch(embedded.train, 4, 64, generator)
    resumed = torch.Generator()
    resumed.set_state(state)
    got = get_batch(embedded.train, 4, 64, resumed)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert torch.equal(got[0][:, 1:], got[1][:, :-1])


def test_a_split_shorter_than_one_window_is_a_clear_error():
    tokens = np.arange(33, dtype=np.uint16)
    x, y = get_batch(tokens, 2, 32, torch.Generator())  # exactly seq_len + 1 tokens: one window
    assert torch.equal(x[0], torch.arange(32)) and torch.equal(y[0], torch.arange(1, 33))
    with pytest.raises(ValueError, match=r"32 tokens is shorter than seq_len \+ 1 = 33"):
        get_batch(tokens[:32], 2, 32, torch.Generator())


def test_fixed_batches_are_the_same_whatever_the_global_seed(embedded):
    torch.manual_seed(1)
    first = fixed_batches(embedded.val, 3, 4, 16, seed=0)
    torch.manual_seed(2)
    second = fixed_batches(embedded.val, 3, 4, 16, seed=0)
    other = fixed_batches(embedded.val, 3, 4, 16, seed=1)
    assert len(first) == 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    assert not torch.equal(first[0][0], other[0][0])
    assert not torch.equal(first[0][0], first[1][0])


def write_folder(root: Path) -> dict[str, bytes]:
    texts = {"a.txt": b"alpha " * 300, "c.py": b"print('c')\n" * 200, "sub/b.md": b"# bee\n" * 300}
    for name, text in texts.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(text)
    (root / "ignored.json").write_bytes(b"{}" * 500)
    return texts


def test_a_folder_of_text_files_and_its_changes(tmp_path):
    folder, data_dir = tmp_path / "corpus", str(tmp_path / "data")
    texts = write_folder(folder)
    data = load_tokens(str(folder), data_dir=data_dir)
    assert data.vocab_size == 256
    stream = texts["a.txt"] + texts["c.py"] + texts["sub/b.md"]  # sorted by relative path
    assert as_bytes(data.train) + as_bytes(data.val) == stream
    assert len(data.val) > 0 and len(data.train) > len(data.val)

    # same size, new text: the old cache must not be used
    edited = folder / "a.txt"
    mtime = edited.stat().st_mtime_ns
    edited.write_bytes(b"omega " * 300)
    os.utime(edited, ns=(mtime + 10**9, mtime + 10**9))
    changed = load_tokens(str(folder), data_dir=data_dir)
    assert as_bytes(changed.train).startswith(b"omega ")


def test_cli_prepares_a_folder_and_says_where(tmp_path, capsys):
    folder = tmp_path / "corpus"
    write_folder(folder)
    assert main(["prepare", str(folder), "--data-dir", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    data = load_tokens(str(folder), data_dir=str(tmp_path / "data"))
    assert f"{len(data.train):,} train + {len(data.val):,} val tokens" in out
    assert str(data.train.filename) in out and str(data.val.filename) in out


def test_missing_or_empty_folders_are_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataUnavailable, match=f"{missing}.*is not a folder.*'embedded', 'openwebtext'"):
        load_tokens(str(missing), data_dir=str(tmp_path))
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "data.json").write_text("{}")
    with pytest.raises(DataUnavailable, match=f"no .txt/.md/.py files under {empty}"):
        load_tokens(str(empty), data_dir=str(tmp_path))


def test_openwebtext_without_files_says_how_to_provide_them(tmp_path, capsys):
    with pytest.raises(DataUnavailable) as error:
        load_tokens("openwebtext", data_dir=str(tmp_path))
    message = str(error.value)
    assert f"python -m trainer.data prepare openwebtext --data-dir {tmp_path}" in message
    assert f"{tmp_path / 'openwebtext'}" in message and "train.bin and val.bin" in message
    assert main(["prepare", "openwebtext", "--data-dir", str(tmp_path)]) == 2
    assert "python -m trainer.data prepare openwebtext" in capsys.readouterr().err


def test_openwebtext_reads_nanogpt_files_copied_into_place(tmp_path):
    folder = tmp_path / "openwebtext"
    folder.mkdir()
    train, val = np.arange(5000, dtype=np.uint16) * 10, np.arange(700, dtype=np.uint16)
    train.tofile(folder / "train.bin")
    val.tofile(folder / "val.bin")
    data = load_tokens("openwebtext", data_dir=str(tmp_path))
    assert data.vocab_size == vocab_size_of("openwebtext", "auto") > int(train.max())
    assert np.array_equal(data.train, train) and np.array_equal(data.val, val)


def test_gpt2_offline_says_how_to_provide_the_bpe_files(tmp_path):
    folder = tmp_path / "corpus"
    write_folder(folder)
    cache = tmp_path / "empty-tiktoken-cache"
    cache.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "trainer.data", "prepare", str(folder), "--tokenizer", "gpt2",
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env=child_env(TIKTOKEN_CACHE_DIR=str(cache), **NO_NETWORK))
    assert done.returncode == 2
    assert "TIKTOKEN_CACHE_DIR" in done.stderr and "tokenizer=byte" in done.stderr
    # the file that needs no network, where it goes and where to get it
    assert str(tmp_path / "data" / "gpt2.tiktoken") in done.stderr and "r50k_base.tiktoken" in done.stderr


def test_gpt2_folder_tokens_decode_to_the_text(tmp_path, monkeypatch):
    for name, value in NO_NETWORK.items():
        monkeypatch.setenv(name, value)
    try:
        encoding = tiktoken.get_encoding("gpt2")
    except Exception:
        pytest.skip("tiktoken's gpt2 BPE files are not cached here (and tests stay offline)")
    folder = tmp_path / "corpus"
    texts = write_folder(folder)
    data = load_tokens(str(folder), tokenizer="gpt2", data_dir=str(tmp_path / "data"))
    assert data.vocab_size == vocab_size_of(str(folder), "gpt2")
    ids = np.concatenate([data.train, data.val]).tolist()
    decoded = encoding.decode(ids)
    assert decoded == "".join(texts[k].decode() + "<|endoftext|>" for k in ("a.txt", "c.py", "sub/b.md"))


def test_vocab_sizes_need_no_data():
    assert vocab_size_of("embedded", "auto") == vocab_size_of("/any/folder", "byte") == 256
    gpt2 = vocab_size_of("openwebtext", "auto")
    assert gpt2 == vocab_size_of("embedded", "gpt2") == vocab_size_of("/any/folder", "gpt2")
    assert gpt2 % 64 == 0 and 50257 <= gpt2 < 50257 + 64
    with pytest.raises(ValueError, match="tokenizer=gpt2"):
        vocab_size_of("openwebtext", "byte")
    with pytest.raises(ValueError, match="choose one of auto, byte, gpt2"):
        vocab_size_of("embedded", "bpe")


# ---- GPT-2 BPE from a file, and openwebtext from local documents ----------------------------------

GPT2_EOT = 50256  # <|endoftext|> in GPT-2's vocab
# Merges for a tiny BPE: pairs common in the documents below, each built from tokens listed before it
MERGES = [b"th", b"he", b"the", b" the", b"an", b" an", b"and", b" and", b"in", b"ng", b"ing", b" c",
          b"at", b" cat", b"er", b" over"]


def write_bpe(path: Path, merges: list[bytes] = MERGES) -> dict[int, bytes]:
    """A tiny BPE in tiktoken's file format: the 256 bytes, then ``merges``; returns id -> bytes."""
    tokens = [bytes([b]) for b in range(256)] + merges
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))
    return {**dict(enumerate(tokens)), GPT2_EOT: b"<|endoftext|>"}


def decode(ids, vocab: dict[int, bytes]) -> str:
    return b"".join(vocab[int(i)] for i in ids).decode("utf-8")


def documents(n: int) -> list[str]:
    """Varied text: words the merges cover, unicode, newlines and quotes that JSON must escape."""
    rng = np.random.default_rng(0)
    words = ["the", "cat", "and", "dog", "ran", "over", "thing", "in", "an", "é", "日本", "\"q\"", "\n"]
    return [f"doc {i}: " + " ".join(rng.choice(words, size=60 + 5 * i)) for i in range(n)]


def write_jsonl(path: Path, docs: list[str]) -> None:
    lines = [json.dumps({"text": d, "url": f"https://example.org/{i}"}) for i, d in enumerate(docs)]
    path.write_text("\n\n".join(lines) + "\n")  # blank lines between documents are skipped


def split_documents(tokens: np.ndarray, vocab: dict[int, bytes]) -> list[str]:
    """A split's documents: the stream cut after each <|endoftext|>."""
    ids = np.asarray(tokens)
    assert len(ids) and ids[-1] == GPT2_EOT
    ends = np.flatnonzero(ids == GPT2_EOT)
    return [decode(ids[a + 1:b], vocab) for a, b in zip([-1, *ends[:-1]], ends)]


def test_openwebtext_from_local_documents_with_a_bpe_file_then_a_cell_trains_on_it(tmp_path, capsys):
    data_dir, docs = tmp_path / "data", documents(40)
    vocab = write_bpe(data_dir / "gpt2.tiktoken")
    write_jsonl(tmp_path / "docs.jsonl", docs)
    assert main(["prepare", "openwebtext", "--from", str(tmp_path / "docs.jsonl"),
                 "--data-dir", str(data_dir), "--num-proc", "2"]) == 0
    assert "openwebtext:gpt2:" in capsys.readouterr().out

    data = load_tokens("openwebtext", data_dir=str(data_dir))
    assert data.vocab_size == vocab_size_of("openwebtext", "auto") > int(max(data.train.max(), data.val.max()))
    train, val = split_documents(data.train, vocab), split_documents(data.val, vocab)
    # nanoGPT's split: datasets' train_test_split(test_size=0.0005, seed=2357) permutes the documents with
    # numpy's default_rng(2357); the first ceil(0.0005 n) are val, the rest train, in that order
    order = np.random.default_rng(2357).permutation(len(docs))
    n_val = math.ceil(0.0005 * len(docs))
    assert val == [docs[i] for i in order[:n_val]] and train == [docs[i] for i in order[n_val:]]
    # the merges are used: " the" is one token, and there are fewer tokens than bytes
    assert (data.train == 256 + MERGES.index(b" the")).any()
    assert len(data.train) < sum(len(docs[i].encode()) for i in order[n_val:])

    result = run(TrainConfig(dataset="openwebtext", data_dir=str(data_dir), width=32, depth=2, base_width=32,
                             base_depth=2, head_dim=16, param="mup", optimizer="adamw", lr=-5, steps=12,
                             warmup_steps=2, batch_size=4, seq_len=32, eval_interval=0, eval_batches=2,
                             log_interval=1, device="cpu", precision="fp32", threads=1))
    losses = [loss for _, loss in result.curves["train"]]
    assert result.status == "ok" and result.steps_done == 12 and math.isfinite(result.val_loss)
    # starts near uniform over GPT-2's padded vocab, then learns which of the ~270 used ids occur
    assert abs(losses[0] - math.log(data.vocab_size)) < 0.5
    assert max(losses[-3:]) < losses[0] - 2 and result.val_loss < losses[0] - 2


def test_a_changed_bpe_file_gets_a_new_folder_cache(tmp_path):
    folder, data_dir = tmp_path / "corpus", tmp_path / "data"
    texts = write_folder(folder)
    stream = "".join(texts[k].decode() + "<|endoftext|>" for k in ("a.txt", "c.py", "sub/b.md"))
    vocab = write_bpe(data_dir / "gpt2.tiktoken")
    data = load_tokens(str(folder), tokenizer="gpt2", data_dir=str(data_dir))
    assert data.vocab_size == vocab_size_of(str(folder), "gpt2")
    ids = np.concatenate([data.train, data.val])
    assert decode(ids, vocab) == stream and (ids == 256 + MERGES.index(b"in")).any()  # "print"

    other = write_bpe(data_dir / "gpt2.tiktoken", merges=[b"ph", b"al"])
    changed = load_tokens(str(folder), tokenizer="gpt2", data_dir=str(data_dir))
    assert changed.train.filename != data.train.filename
    changed_ids = np.concatenate([changed.train, changed.val])
    assert decode(changed_ids, other) == stream and (changed_ids == 257).any()  # "al" of "alpha"
    assert not (changed_ids == 256 + MERGES.index(b"in")).any()


def prepare_two_documents(tmp_path: Path, data_dir: Path):
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "hi"}) + "\n" + json.dumps({"text": "ho"}))
    return prepare_openwebtext(str(data_dir), num_proc=1, source=str(tmp_path / "docs.jsonl"))


@pytest.mark.parametrize("content, problem", [
    ("", "it holds no ranks"),
    ("dGg= 256\nnot-base64! 257\n", r"line 2 \(b'not-base64! 257'\) is not 'base64\(token bytes\) rank'"),
    ("dGg= 256 7\n", "line 1 .* is not 'base64"),
    ("dGg= 0\n", "256 of the 256 single bytes have no rank"),
])
def test_a_bad_bpe_file_is_named_with_its_problem(tmp_path, content, problem):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "gpt2.tiktoken").write_text(content)
    bpe_file = re.escape(str(data_dir / "gpt2.tiktoken"))
    with pytest.raises(DataUnavailable, match=f"{bpe_file}: {problem}") as error:
        prepare_two_documents(tmp_path, data_dir)
    assert "r50k_base.tiktoken" in str(error.value) and "delete it" in str(error.value)
    assert not (data_dir / "openwebtext" / "train.bin").exists()


def test_bpe_ranks_must_leave_room_for_endoftext_and_be_unique(tmp_path):
    data_dir = tmp_path / "data"
    write_bpe(data_dir / "gpt2.tiktoken")
    bpe = data_dir / "gpt2.tiktoken"
    good = bpe.read_text()
    bpe.write_text(good + f"{base64.b64encode(b'zz').decode()} {GPT2_EOT}\n")
    with pytest.raises(DataUnavailable, match=r"ranks run from 0 to 50256; GPT-2's lie in 0..50255"):
        prepare_two_documents(tmp_path, data_dir)
    bpe.write_text(good + f"{base64.b64encode(b'zz').decode()} 3\n")
    with pytest.raises(DataUnavailable, match="two tokens share a rank"):
        prepare_two_documents(tmp_path, data_dir)
    bpe.write_text(good + f"{base64.b64encode(b'th').decode()} 999\n")
    with pytest.raises(DataUnavailable, match=f"line {len(good.splitlines()) + 1} repeats the token b'th'"):
        prepare_two_documents(tmp_path, data_dir)


def test_bad_local_documents_are_named(tmp_path, capsys):
    data_dir = tmp_path / "data"
    write_bpe(data_dir / "gpt2.tiktoken")
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"body": "two"}) + "\n")
    assert main(["prepare", "openwebtext", "--from", str(docs), "--data-dir", str(data_dir)]) == 2
    assert f'{docs} line 2: not a JSON object with a string "text"' in capsys.readouterr().err
    docs.write_text(json.dumps({"text": "only one"}) + "\n")
    assert main(["prepare", "openwebtext", "--from", str(docs), "--data-dir", str(data_dir)]) == 2
    assert "holds 1 document(s): openwebtext needs at least 2" in capsys.readouterr().err
    assert main(["prepare", "openwebtext", "--from", str(tmp_path / "none.jsonl"), "--data-dir", str(data_dir)]) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err
    assert not (data_dir / "openwebtext" / "train.bin").exists()
