"""Grid syntax: overrides like ``width=128,...,4096 lr=-10:-5`` -> the list of cells to run.

The project's own forms, on the sweep axes only:
  ``a,...,b``   the doubling progression a, 2a, 4a, ..., b (b must be a * 2^k)
  ``a:b``       every integer from a to b inclusive;  ``a:b:s`` steps of s (may be fractional)
Everything else is Hydra's own override grammar (``1,2,3``, ``range(...)``, ``choice(...)``, a single
value), parsed by Hydra's parser. Other settings take one value each.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

SWEEPABLE = ("width", "depth", "lr", "param", "optimizer", "layernorm", "seed")
INTEGER_AXES = ("width", "depth", "seed")
NUMERIC_AXES = INTEGER_AXES + ("lr",)

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_DOUBLING = re.compile(r"^\s*([^,]+?)\s*,\s*\.\.\.\s*,\s*([^,]+?)\s*$")
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*:\s*({_NUMBER})\s*(?::\s*({_NUMBER})\s*)?$")
_MAX_VALUES = 10_000  # a longer axis is a typo (a step of 0.0001), not a sweep


class GridError(ValueError):
    """A sweep value that cannot be expanded; the message names the key and the fix."""


@dataclass(frozen=True)
class Cell:
    """One job: its overrides (``key=value`` strings) and the swept axes' values, for messages."""

    overrides: tuple[str, ...]
    axes: tuple[tuple[str, str], ...]

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.axes) or "(single cell)"


def _format(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else repr(float(value))


def _doubling(key: str, text: str) -> list[str]:
    match = _DOUBLING.match(text)
    if not match:
        raise GridError(
            f"{key}={text}: write the doubling progression as a,...,b (e.g. {key}=128,...,4096)"
        )
    try:
        start, end = int(match.group(1)), int(match.group(2))
    except ValueError:
        raise GridError(f"{key}={text}: a,...,b needs positive integers a and b") from None
    if start < 1 or end < start:
        raise GridError(f"{key}={text}: a,...,b needs positive integers with a <= b")
    values = [start]
    while values[-1] < end:
        values.append(values[-1] * 2)
    if values[-1] != end:
        lower = values[-2] if len(values) > 1 else start
        raise GridError(
            f"{key}={text}: {end} is not {start}*2^k, so the doubling progression never reaches "
            f"it; end it at {lower} or {values[-1]}"
        )
    return [str(v) for v in values]


def _arange(key: str, text: str) -> list[str]:
    match = _RANGE.match(text)
    if not match:
        raise GridError(
            f"{key}={text}: write a range as a:b (every integer) or a:b:s (step s), "
            f"e.g. {key}=-10:-5 or {key}=-10:-5:0.5"
        )
    start, end = Fraction(match.group(1)), Fraction(match.group(2))
    step = Fraction(match.group(3)) if match.group(3) else Fraction(1)
    if step <= 0:
        raise GridError(f"{key}={text}: the step must be positive; write the range low:high:step")
    if end < start:
        raise GridError(f"{key}={text}: the start is above the end; write it as {_format(end)}:"
                        f"{_format(start)}" + (f":{match.group(3)}" if match.group(3) else ""))
    count = int((end - start) / step) + 1
    if count > _MAX_VALUES:
        raise GridError(f"{key}={text}: {count} values; use a coarser step")
    values = [start + i * step for i in range(count)]
    if key in INTEGER_AXES and any(v.denominator != 1 for v in values):
        raise GridError(f"{key}={text}: {key} takes integers; use an integer start and step")
    return [_format(v) for v in values]


def grid_values(key: str, text: str) -> Optional[list[str]]:
    """The values of one of the project's grid forms, or None if ``text`` is not one.

    Only the sweep axes take them: other settings (paths, names) may contain ':' or '...'."""
    if key not in SWEEPABLE:
        return None
    if "..." in text:
        return _doubling(key, text)
    if ":" in text:
        if key not in NUMERIC_AXES:
            raise GridError(f"{key}={text}: ranges a:b are for numeric axes ({', '.join(NUMERIC_AXES)});"
                            f" list the {key} values as {key}=a,b")
        return _arange(key, text)
    if key in NUMERIC_AXES:
        _check_numbers(key, text)
    return None


_FUNCTION = re.compile(r"^\s*(?:range|choice|interval|glob|shuffle|sort|tag)\(")
_NEAR_RANGE = re.compile(rf"^\s*({_NUMBER})\s*(\.\.|-|…|to)\s*({_NUMBER})\s*$")
_EXAMPLE = {"width": "32,...,128", "depth": "2,...,8", "lr": "-10:-5", "seed": "0:2"}


def _check_numbers(key: str, text: str) -> None:
    """A numeric axis's value that is neither a number, a list of numbers nor one of Hydra's sweep
    functions fails here, naming the forms that work, rather than as OmegaConf's type error."""
    pieces = [piece.strip() for piece in text.split(",")]
    if (_FUNCTION.match(text) or "${" in text or text.count("[") != text.count("]")
            or any(re.fullmatch(r"\.{2,}|[-+]?(nan|inf)", p, re.IGNORECASE) for p in pieces)):
        return  # Hydra's functions, interpolations, syntax errors, a,..,b, nan: their own messages
    if all(re.fullmatch(_NUMBER, piece) for piece in pieces):
        return
    sizes = key in ("width", "depth")
    near = _NEAR_RANGE.match(text)
    meant = ""
    if near and (sizes or near.group(2) != "-"):  # lr=-10-5 may be either
        a, b = near.group(1), near.group(3)
        meant = (f" did you mean {key}={a},...,{b} (doubling) or {key}={a}:{b} (every integer)?" if sizes
                 else f" did you mean {key}={a}:{b}?")
    forms = "a number, a list a,b,c, " + ("a doubling progression a,...,b " if sizes else "")
    raise GridError(f"{key}={text}: not a value of {key}.{meant} {key} takes {forms}or a range a:b "
                    f"(a:b:s in steps of s), e.g. {key}={_EXAMPLE[key]}")


def _split(override: str) -> tuple[str, str]:
    key, sep, value = override.partition("=")
    if not sep:
        raise GridError(f"'{override}' is not an override: write key=value")
    return key.strip(), value


def _hydra_values(parser: OverridesParser, override: str) -> tuple[str, list[str]]:
    """Key and value strings of one override in Hydra's own grammar (sweeps expanded)."""
    try:
        parsed = parser.parse_override(override)
    except HydraException as err:
        raise GridError(f"cannot parse '{override}': {str(err).splitlines()[0]}") from None
    key = parsed.get_key_element()
    if not parsed.is_sweep_override():
        return key, [parsed.get_value_element_as_str()]
    if not parsed.is_discrete_sweep():
        raise GridError(f"{override}: interval() sweeps need a search algorithm; give discrete "
                        f"values (a,b,c, a:b:s, range(...), choice(...))")
    values = list(parsed.sweep_string_iterator())
    for value in values:
        if re.fullmatch(r"\.{2,}", value):
            raise GridError(f"{override}: '{value}' is not a value; the doubling progression is "
                            f"written a,...,b with exactly three dots")
    return key, values


def axis(parser: OverridesParser, override: str) -> tuple[str, list[str]]:
    """One override -> (key, its values as strings)."""
    key, text = _split(override)
    values = grid_values(key, text)
    if values is None:
        key, values = _hydra_values(parser, override)
    if len(values) > 1 and key not in SWEEPABLE:
        raise GridError(
            f"{key} cannot be swept (sweep axes: {', '.join(SWEEPABLE)}): give it one value, "
            f"or run one sweep per {key}"
        )
    if not values:
        raise GridError(f"{override}: the sweep has no values")
    return key, values


def expand(overrides: Iterable[str], parser: Optional[OverridesParser] = None) -> list[Cell]:
    """The cartesian product of all overrides, in order (a later override of a key replaces the
    earlier one, so command-line values replace an experiment's default grid)."""
    parser = parser or OverridesParser.create()
    axes: dict[str, list[str]] = {}
    for override in overrides:
        key, values = axis(parser, override)
        axes[key] = values  # a replaced key keeps its first position
    swept = [k for k, v in axes.items() if len(v) > 1]
    cells = []
    for combo in itertools.product(*axes.values()):
        chosen = dict(zip(axes, combo))
        cells.append(Cell(
            overrides=tuple(f"{k}={v}" for k, v in chosen.items()),
            axes=tuple((k, chosen[k]) for k in swept),
        ))
    return cells


def rewrite_override(override: str) -> str:
    """A command-line override with a grid form rewritten as Hydra's own list (``lr=-10,-9,...``).

    Hydra applies non-sweep overrides to the typed config before the sweeper runs, so it would
    read ``lr=-10:-5`` as the string '-10:-5' for a float; the list is what the form means."""
    key, sep, text = override.partition("=")
    if not sep:
        return override
    values = grid_values(key.strip(), text)
    return override if values is None else f"{key}={','.join(values)}"
