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

Modules, by job: ``tokens`` opens a dataset (``load_tokens``) and prepares text datasets; ``batches``
draws training and validation batches; ``tokenizer`` holds the byte and GPT-2 BPE tokenizers;
``cache`` the token files' cache (its lock, atomic publishing, memory maps); ``openwebtext`` prepares
openwebtext; ``prepare`` is the command line (``python -m trainer.data prepare ...``).
"""
