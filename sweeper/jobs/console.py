"""The command lines' shared edge: output that may be piped into ``head`` or ``less``."""
from __future__ import annotations

import os
import sys
from typing import Callable


def run_piped(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """main(argv), quiet when the reader of stdout goes away (``... | head``)."""
    try:
        code = main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
