"""The sweep command line before Hydra sees it: grid forms become Hydra lists, typos stop early.

Hydra applies plain overrides to the typed config before any sweeper runs, so ``lr=-10:-5`` would
fail there as "not a float"; and a mistyped key would fail with Hydra's advice to append it
(``+widht=...``), which is never the fix here.
"""
from __future__ import annotations

import re

from trainer.cli import unknown_key_message

from .expand import rewrite_override

_PLAIN_KEY = re.compile(r"^([A-Za-z_]\w*)=")  # no group path, no dotted hydra key, no +/~ prefix


def hydra_quote(text: str) -> str:
    """``text`` as one quoted Hydra value that reads back as ``text``. Inside Hydra's quotes a
    backslash is literal unless it precedes a quote or the closing quote: only those are doubled."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text) + "'"


def prepare(argv: list[str], known: set[str]) -> list[str]:
    """Rewritten arguments; raises ValueError (GridError) naming the key and the fix."""
    out = []
    for arg in argv:
        match = _PLAIN_KEY.match(arg)
        if match and match.group(1) not in known:
            raise ValueError(unknown_key_message(match.group(1), sorted(known)))
        out.append(rewrite_override(arg) if match else arg)
    return out
