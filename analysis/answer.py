"""The report's answer: a title and one line per table saying which base learning rate to use.

``transfers``: one eta_base for every size, the mean of the rows' eta* with its LEVEL interval
(analysis.confidence.TableNoise.mean); ``does not transfer``: each size's own eta* and the trend per
doubling; ``undecided``: what is known and the sweep line that would decide it. Every rate is written
as log2 (the grid's unit, ``lr=`` on the sweep's command line) and as eta itself.
"""
from __future__ import annotations

import math

from .analysed import Analysed
from .optima import LEVEL, NO_TRANSFER, TRANSFERS, UNDECIDED
from .tables import param_name, value_text

SIZE_AXES = ("width", "depth")


def rate(log2: float) -> str:
    """2^-4.30 ≈ 0.051: the grid's log2 and the learning rate itself."""
    return f"2^{log2:.2f} ≈ {2.0 ** log2:.3g}"


def label(table, tables) -> str:
    """The table as a reader names it: its parameterization, then the settings that tell it apart
    from the other tables of the store (the fixed size included when that differs)."""
    name = param_name(table.title["param"]) if "param" in table.title else "this table"
    varying = [k for k in table.title if k != "param"
               and len({value_text(t.title.get(k)) for t in tables}) > 1]
    fixed = "depth" if table.axis == "width" else "width"
    parts = [f"{k} {value_text(table.title[k])}" if k in SIZE_AXES else f"{k}={value_text(table.title[k])}"
             for k in varying if k != fixed or any(t.axis == table.axis and t is not table for t in tables)]
    return name + (f" ({', '.join(parts)})" if parts else "")


def _span(a: Analysed) -> str:
    sizes = [o.size for o in a.optima if o.lr is not None]
    return f"{a.table.axis} {min(sizes):g}–{max(sizes):g}" if sizes else a.table.axis


def _row_rate(opt, interval) -> str:
    if opt.edge:
        return f"{rate(opt.lr)} or {opt.edge} (edge of the grid)"
    if opt.bounded:
        return f"{rate(opt.lr)} (stability-bounded: the next rate {opt.bounded} diverged)"
    text = rate(opt.estimate)
    if interval is not None:
        low, high = interval.bounds(LEVEL)
        text += f" ({LEVEL:.0%}: 2^{low:.2f} … 2^{high:.2f})"
    return text


def _trend(a: Analysed) -> str:
    judged = a.verdict
    if judged.trend is None:
        return "no η* trend (fewer than two closed optima)"
    text = f"η* moves {judged.trend:+.2f} log2 per doubling of {a.table.axis}"
    if judged.trend_bounds:
        text += f" ({LEVEL:.0%}: {judged.trend_bounds[0]:+.2f} … {judged.trend_bounds[1]:+.2f})"
    return text


def answer_line(a: Analysed, tables) -> str:
    judged, name = a.verdict, label(a.table, tables)
    if judged.outcome is None:
        return f"{name}: no verdict ({judged.summary})"
    head = f"{name} {judged.outcome} over {_span(a)}"
    if judged.outcome == TRANSFERS:
        mean = a.noise.mean([r for r, o in enumerate(a.optima) if o.lr is not None and not o.open])
        text = f"{head}: use η_base = {rate(mean.center)} at any {a.table.axis}"
        low, high = mean.bounds(LEVEL)
        return text + f" ({LEVEL:.0%}: 2^{low:.2f} … 2^{high:.2f}); {_trend(a)}"
    per_size = "; ".join(f"{a.table.axis} {o.size:g}: {_row_rate(o, a.noise.eta[r])}"
                         for r, o in enumerate(a.optima) if o.lr is not None)
    if judged.outcome == NO_TRANSFER:
        tail = next((part for part in judged.summary.split("; ") if part.startswith("transfers for")), None)
        diverges = [size for size, regret in judged.regrets.items() if math.isinf(regret)]
        if diverges:
            tail = (f"the smallest {a.table.axis}'s η* ({rate(judged.reference_lr)}) diverges at {a.table.axis} "
                    + ", ".join(f"{s:g}" for s in diverges) + (f"; {tail}" if tail else ""))
        return f"{head}: {_trend(a)}{'; ' + tail.split(' (eta')[0] if tail else ''}. Use η_base = {per_size}"
    assert judged.outcome == UNDECIDED
    decide = judged.command or judged.close_command
    return (f"{head}: {_trend(a)}; η* so far {per_size}. To decide, "
            + (f"run: {decide}" if decide else judged.decide.text if judged.decide else "extend the sweep"))


def title(analysed: list[Analysed], store) -> str:
    """What was compared, on which store: e.g. 'SP vs μP over width (results/cpu_width)'."""
    params = list(dict.fromkeys(param_name(a.table.title["param"]) for a in analysed if "param" in a.table.title))
    params.sort(key=lambda p: (p != "SP", p))  # SP first, as in the paper
    swept = {a.table.axis for a in analysed if len(a.table.sizes) > 1}
    axes = " and ".join(axis for axis in SIZE_AXES if axis in swept) or "size"
    compared = " vs ".join(params) if params else "η_base"
    return f"Learning-rate transfer: {compared} over {axes} ({store})"


def answer_lines(analysed: list[Analysed]) -> list[str]:
    tables = [a.table for a in analysed]
    return [answer_line(a, tables) for a in analysed]
