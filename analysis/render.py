"""A store's tables (analysis.tables.Table) rendered: Markdown, LaTeX (booktabs) and a DataFrame
per table, with its optima, verdict, intervals and notes."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .confidence import TableNoise, method_note
from .optima import LEVEL, RowOptimum, Verdict, row_optimum
from .tables import Table, caption, value_text


def _counts_vary(table: Table) -> bool:
    """Whether cells hold different numbers of seeds: then each cell says how many."""
    return len(np.unique(table.runs[table.runs > 0])) > 1


def _cell(table: Table, r: int, c: int, counts: bool) -> str:
    if table.runs[r, c] == 0:
        return ""
    text = "NaN" if table.diverged[r, c] else f"{table.loss[r, c]:.3f}"
    if np.isfinite(table.spread[r, c]):
        text += f" ± {table.spread[r, c]:.3f}"
    return text + (f" ({table.runs[r, c]})" if counts else "")


def _fit(opt: RowOptimum) -> str:
    if opt.lr is None:
        return ""
    if opt.open:
        return ("<= " if opt.open == "below" else ">= ") + f"{opt.lr:g}"
    return f"{opt.lr_refined:.2f}"


def _interval(interval) -> str:
    if interval is None:
        return ""
    low, high = interval.bounds()
    return ("(-inf" if math.isinf(low) else f"[{low:.2f}") + ", " + ("inf)" if math.isinf(high) else f"{high:.2f}]")


def _regret(verdict: Verdict, size: float) -> str:
    regret = verdict.regrets.get(size, math.nan)
    return "diverged" if math.isinf(regret) else "" if math.isnan(regret) else f"{regret:.3f}"


def _has_intervals(noise: TableNoise) -> bool:
    return any(interval is not None for interval in noise.eta)


def _rows(table: Table, optima: list[RowOptimum], verdict: Verdict, noise: TableNoise, bold,
          escape=lambda text: text) -> list[list[str]]:
    """Size, the cells (the row's best in bold), eta* grid, eta* fit (and its interval), regret at the
    smallest size's eta*; every cell through ``escape``."""
    rows, counts = [], _counts_vary(table)
    for r, opt in enumerate(optima):
        cells = []
        for c, lr in enumerate(table.lrs):
            text = escape(_cell(table, r, c, counts))
            cells.append(bold(text) if opt.lr == lr and text else text)
        grid = "" if opt.lr is None else f"{opt.lr:g}"
        interval = [_interval(noise.eta[r])] if _has_intervals(noise) else []
        rows.append([value_text(table.sizes[r]), *cells,
                     *map(escape, [grid, _fit(opt), *interval, _regret(verdict, opt.size)])])
    return rows


def _sparse_note(table: Table) -> str | None:
    """Which rows of a sparse table (a transfer search's) are bracketed -- the best cell has worse or
    diverged cells on both sides among the row's own cells -- and by how many cells."""
    done = table.runs > 0
    if done.all():
        return None
    rows = []
    for r, size in enumerate(table.sizes):
        n, d = int(done[r].sum()), done[r]
        opt = row_optimum(size, table.lrs[d], table.loss[r][d], table.diverged[r][d])
        bracketed = opt.lr is not None and opt.edge is None
        rows.append(f"{table.axis} {value_text(size)} " + (f"bracketed by {n} cells" if bracketed
                                                          else f"not bracketed ({n} cells)"))
    return "sparse rows: " + ", ".join(rows)


def _header(noise: TableNoise, grid: str, fit: str, interval: str) -> list[str]:
    return [grid, fit, *([interval] if _has_intervals(noise) else []), "regret"]


def seeds_note(table: Table) -> str:
    held = table.runs[table.runs > 0]
    if not held.size:
        return "no runs"
    low, high = int(held.min()), int(held.max())
    if high == 1:
        return "1 seed per cell"
    spread = "cells: mean ± standard deviation over the seeds (a cell with any diverged seed is NaN)"
    if low == high:
        return f"{high} seeds per cell; {spread}"
    return f"{low} to {high} seeds per cell (in brackets); {spread}"


def notes(table: Table, optima: list[RowOptimum], verdict: Verdict, noise: TableNoise,
          command=lambda c: c, facts: list[str] | None = None) -> list[str]:
    """The table's notes; ``command`` formats a suggested sweep line (None: leave it out); ``facts``:
    table_facts of the table, when already computed."""
    lines = [f"verdict: {verdict.summary}"]
    if verdict.command and command:
        lines.append(f"to decide, run: {command(verdict.command)}")
    if verdict.close_command and command and verdict.close_command != verdict.command:
        lines.append(f"to close the open optima, run: {command(verdict.close_command)}")
    return lines + (table_facts(table, optima, noise) if facts is None else facts)


def table_facts(table: Table, optima: list[RowOptimum], noise: TableNoise) -> list[str]:
    """The notes after the verdict, the same in every format: sparse rows, edges, seeds, interval
    methods, failed runs."""
    lines = []
    sparse = _sparse_note(table)
    if sparse:
        lines.append(sparse)
    for opt in optima:
        if opt.open:
            lines.append(f"{table.axis} {value_text(opt.size)}: {opt.edge_note()}")
    lines.append(seeds_note(table))
    method = method_note(table, optima, noise)
    if method:
        lines.append(method)
    if table.failed:
        lines.append(f"{table.failed} failed run(s) left out")
    return lines


def to_markdown(table: Table, optima: list[RowOptimum], verdict: Verdict, noise: TableNoise,
                facts: list[str] | None = None) -> str:
    header = [f"{table.axis} \\ log2 eta", *[f"{lr:g}" for lr in table.lrs], *_header(noise, "eta* grid", "eta* fit", f"eta* {LEVEL:.0%}")]
    rows = [header, *_rows(table, optima, verdict, noise, lambda s: f"**{s}**")]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.rjust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    body = "\n".join(lines)
    text = notes(table, optima, verdict, noise, command=lambda c: f"`{c}`", facts=facts)
    return f"### {caption(table)}\n\n{body}\n\n" + "".join(f"- {n}\n" for n in text)


LATEX = {"\\": "\\textbackslash{}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "<": "$<$", ">": "$>$",
         "±": "$\\pm$", **{c: "\\" + c for c in "_%&#${}"}}


def _latex_escape(text: str) -> str:
    text = "".join(LATEX.get(c, c) for c in text).replace("μ", "$\\mu$")
    return text.replace("$<$=", "$\\le$").replace("$>$=", "$\\ge$").replace("eta*", "$\\eta^*$")


def to_latex(table: Table, optima: list[RowOptimum], verdict: Verdict, noise: TableNoise,
             facts: list[str] | None = None) -> str:
    symbol = {"width": "n", "depth": "L"}[table.axis]
    header = [f"${symbol}$ / $\\log_2\\eta_{{\\mathrm{{base}}}}$", *[f"${lr:g}$" for lr in table.lrs],
              *_header(noise, "$\\log_2\\eta^*$ grid", "fit", f"{100 * LEVEL:.0f}\\% interval")]
    rows = _rows(table, optima, verdict, noise, lambda s: f"\\textbf{{{s}}}", _latex_escape)
    # A short caption; the verdict and notes go below the table, where a wide tabular has room.
    title = _latex_escape(caption(table))
    below = [_latex_escape(n) for n in notes(table, optima, verdict, noise, command=None, facts=facts)]
    lines = [
        "\\begin{table}[ht]", "\\centering", f"\\caption{{{title}}}", f"\\label{{tab:{table.slug}}}",
        f"\\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}", "\\toprule", " & ".join(header) + " \\\\",
        "\\midrule", *[" & ".join(row) + " \\\\" for row in rows], "\\bottomrule", "\\end{tabular}",
        "\\par\\smallskip", "\\begin{minipage}{\\linewidth}\\footnotesize",
        *[f"{text}\\par" for text in below], "\\end{minipage}", "\\end{table}",
    ]
    return "\n".join(lines) + "\n"


def to_frame(table: Table, optima: list[RowOptimum], verdict: Verdict, noise: TableNoise) -> pd.DataFrame:
    """The grid as numbers (nan: diverged, empty: missing) with each row's optimum, its interval and
    regret (inf: the smallest size's eta* diverges there), for CSV."""
    values = np.where(table.diverged, "nan", np.where(table.runs > 0, table.loss.astype(str), ""))
    grid = pd.DataFrame(values, columns=[f"{lr:g}" for lr in table.lrs])
    grid.insert(0, table.axis, [int(s) if float(s).is_integer() else s for s in table.sizes])
    grid["lr_star_grid"] = [opt.lr for opt in optima]
    grid["lr_star_fit"] = [opt.lr_refined for opt in optima]
    grid["lr_star_low"], grid["lr_star_high"] = zip(*interval_bounds(noise)) if len(optima) else ([], [])
    grid["edge"] = [opt.edge or "" for opt in optima]
    grid["open"] = [opt.open or "" for opt in optima]
    grid["regret"] = [verdict.regrets.get(opt.size) for opt in optima]
    return grid


def interval_bounds(noise: TableNoise) -> list[tuple[float, float]]:
    """Each row's eta* interval at LEVEL; NaN where it has none."""
    return [(math.nan, math.nan) if interval is None else interval.bounds() for interval in noise.eta]
