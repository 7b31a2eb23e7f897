"""``python -m trainer.data prepare [DATASET]``: tokenize a dataset into DATA_DIR once, ahead of a sweep."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from .cache import DataUnavailable, default_data_dir
from .openwebtext import prepare_openwebtext
from .tokenizer import TOKENIZERS, resolve_tokenizer
from .tokens import load_tokens


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
