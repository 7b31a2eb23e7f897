"""Figures (PNG and PDF) through matplotlib's object API: no pyplot, so no global backend state.

Transfer curves and eta* against size follow the paper's Figures 1-2, with the spread over seeds
(a band of +- one standard deviation) and eta*'s interval (bars); coordinate checks plot the last
block's output RMS against size per step, SP beside muP; training curves show one cell's run.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from .optima import LEVEL, RowOptimum
from .tables import Table, value_text

CMAP = colormaps["viridis"]
LEGEND_WIDTH = 40  # characters per legend line, wrapped at spaces
LEGEND_CHAR_PT, LEGEND_HANDLE_PT = 4.4, 34  # a 7 pt character's width (at most, nearly), the line sample's
LR_LABEL = "log₂ η_base"  # unicode, not mathtext, which is slow to lay out


def save(fig: Figure, stem: Path) -> list[Path]:
    """Writes stem.png and stem.pdf."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.parent / f"{stem.name}.{ext}" for ext in ("png", "pdf")]  # stems may hold dots
    for path in paths:
        fig.savefig(path, dpi=120)
    return paths


Job = tuple[Callable[..., Figure], tuple, Path]  # (draw function, its arguments, file stem)


def _render(job: Job) -> list[Path]:
    draw, args, stem = job
    return save(draw(*args), stem)


def render(jobs: list[Job], workers: int = 1) -> list[Path]:
    """Draws and saves every figure, in ``workers`` processes: drawing text is matplotlib's slow
    part and figures are independent. A forkserver (not fork: the caller may hold pyarrow's
    threads) that has imported matplotlib once starts the workers."""
    if workers <= 1 or len(jobs) < 2:
        return [path for job in jobs for path in _render(job)]
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
    else:
        context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
        return [path for paths in pool.map(_render, jobs) for path in paths]


def _figure(panels: int = 1) -> Figure:
    """Fixed margins with the legend outside on the right: a tight bbox or legend loc="best"
    would each cost another layout pass per file."""
    fig = Figure(figsize=(3.6 * panels + 2.6, 4.0))
    fig.subplots_adjust(left=0.1 if panels > 1 else 0.14, right=0.72 if panels == 1 else 0.84, top=0.84, bottom=0.13)
    return fig


def _legend(ax, **kwargs) -> None:
    """The legend right of the axes; the figure widens (the axes keep their size) where its longest
    line would run past the edge, estimated from its length in characters: no layout pass."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        ax.text(0.5, 0.5, "no finite values to plot", ha="center", transform=ax.transAxes)
        return
    fig, params = ax.figure, ax.figure.subplotpars
    lines = [line for text in [*labels, kwargs.get("title", "")] for line in text.split("\n")]
    need = (max(map(len, lines)) * LEGEND_CHAR_PT + LEGEND_HANDLE_PT) / 72  # inches right of the axes
    width = fig.get_figwidth()
    if need > width * (1 - params.right):
        wider = width * params.right + need
        fig.set_figwidth(wider)
        fig.subplots_adjust(left=params.left * width / wider, right=params.right * width / wider)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False, **kwargs)


def _colors(n: int) -> list:
    # Stop short of viridis' pale yellow end, which vanishes on white.
    return [CMAP(x) for x in np.linspace(0.0, 0.85, n)] if n > 1 else [CMAP(0.0)]


def y_range(table: Table) -> tuple[float, float]:
    """Clips exploding losses so they do not flatten the curves near the optima: the top is Tukey's
    far-out fence (q75 + 3 IQR) of the finite losses, but never below the worst row optimum."""
    finite = table.loss[np.isfinite(table.loss)]
    low, high = float(finite.min()), float(finite.max())
    q25, q75 = np.percentile(finite, [25, 75])
    best_worst = float(np.nanmax(np.nanmin(np.where(np.isfinite(table.loss), table.loss, np.nan), axis=1)))
    top = min(high, max(q75 + 3 * (q75 - q25), best_worst))
    pad = 0.05 * (top - low) or 0.05 * abs(low) or 0.05
    return low - pad, top + pad


def transfer_curves(table: Table, optima: list[RowOptimum]) -> Figure:
    """Val loss against log2 eta, one line per size, a band of +- one standard deviation over the
    seeds where a cell has several; star: each row's optimum; x on the top edge: diverged; triangle
    on the top edge: a finite loss above the clipped y-range."""
    fig = _figure()
    ax = fig.add_subplot()
    has_data = np.isfinite(table.loss).any()
    low, top = y_range(table) if has_data else (0.0, 1.0)
    colors = np.array(_colors(len(table.sizes)))
    for r, color in enumerate(colors):
        finite = np.isfinite(table.loss[r])
        if finite.any():
            ax.plot(table.lrs[finite], table.loss[r, finite], "-o", color=color, ms=3.5,
                    label=f"{table.axis} {value_text(table.sizes[r])}")
            spread = np.nan_to_num(table.spread[r, finite])
            if spread.any():
                loss = table.loss[r, finite]
                ax.fill_between(table.lrs[finite], loss - spread, loss + spread, color=color, alpha=0.2, lw=0)
    # One scatter per marker kind, not per row: each artist costs layout time on every save.
    rows, cols = np.nonzero(np.isfinite(table.loss) & (table.loss > top))
    ax.scatter(table.lrs[cols], np.full(len(cols), top), marker="^", c=colors[rows], clip_on=False, zorder=3)
    rows, cols = np.nonzero(table.diverged)
    ax.scatter(table.lrs[cols], np.full(len(cols), top), marker="x", color="red", s=40, clip_on=False, zorder=3)
    best = [(r, o.lr, o.loss) for r, o in enumerate(optima) if o.lr is not None]
    if best:
        rows, lrs, losses = map(np.array, zip(*best))
        ax.scatter(lrs, losses, marker="*", s=140, c=colors[rows], edgecolors="black", linewidths=0.6, zorder=4)
    ax.set_ylim(low, top)
    ax.set_xlabel(LR_LABEL)
    ax.set_ylabel("final validation loss")
    ax.set_title(_wrap(table.name), fontsize=9)
    ax.grid(alpha=0.3)
    band = "\nband: ± sd over seeds" if np.isfinite(table.spread).any() else ""
    _legend(ax, title=f"★ optimum\n× diverged\n▲ off the top{band}", title_fontsize=7)
    return fig


def eta_star(axis: str, tables: list[Table], optima: list[list[RowOptimum]],
             intervals: list[list[tuple[float, float]]]) -> Figure:
    """Refined log2 eta* against size, one line per table, with each row's interval as a bar (NaN
    bounds: none); hollow markers: open optima (on the grid's edge or against a diverged cell)."""
    fig = _figure()
    ax = fig.add_subplot()
    for table, opts, bounds, color in zip(tables, optima, intervals, _colors(len(tables))):
        points = [(o.size, o.estimate, o.open, *b) for o, b in zip(opts, bounds) if o.lr is not None]
        if not points:
            continue
        sizes, etas, edges, lows, highs = map(np.array, zip(*points))
        ax.plot(sizes, etas, "-", color=color, label=_wrap(_short(table, tables), LEGEND_WIDTH))
        known = np.isfinite(lows) & np.isfinite(highs)  # an open interval: the hollow marker says it
        if known.any():
            ax.errorbar(sizes[known], etas[known], yerr=[etas[known] - lows[known], highs[known] - etas[known]],
                        fmt="none", ecolor=color, elinewidth=1, capsize=3, zorder=2)
        edge = edges != None  # noqa: E711 -- elementwise over an object array
        ax.scatter(sizes[~edge], etas[~edge], color=color, zorder=3)
        ax.scatter(sizes[edge], etas[edge], facecolors="white", edgecolors=color, zorder=3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(axis)
    ax.set_ylabel("log₂ η* (fit; hollow: open optimum)")
    ax.grid(alpha=0.3)
    has_bars = any(np.isfinite(low) and np.isfinite(high) for bounds in intervals for low, high in bounds)
    _legend(ax, **({"title": f"bars: {LEVEL:.0%} interval", "title_fontsize": 7} if has_bars else {}))
    return fig


def coord_check(rows: pd.DataFrame, title: str) -> Figure:
    """RMS of the last block's output against size, one line per step, one panel per param.

    ``rows`` holds one optimizer and one fixed size; the varying of width/depth is the x axis."""
    axis = "width" if rows["width"].nunique() > 1 else "depth"
    blocks = rows[rows["site"] == "block"] if "site" in rows else rows  # older files: block rows only
    last = blocks[blocks["block"] == blocks["depth"] - 1]
    params = sorted(last["param"].unique(), key=lambda p: (p != "sp", p))  # SP first, as in the paper
    fig = _figure(len(params))
    axes = fig.subplots(1, len(params), sharey=True, squeeze=False)[0]
    steps = sorted(last["step"].unique())
    for ax, param in zip(axes, params):
        mean = last[last["param"] == param].groupby(["step", axis])["rms"].mean()
        for step, color in zip(steps, _colors(len(steps))):
            if step in mean.index.get_level_values(0):
                curve = mean.loc[step]
                ax.plot(curve.index, curve.to_numpy(), "-o", ms=3, color=color, label=f"step {step}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(axis)
        ax.set_title(param, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("RMS of the last block's output")
    _legend(axes[-1])
    fig.suptitle(title, fontsize=9)
    return fig


def training_curves(record: dict) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    for name, style in (("train", "-"), ("val", "-o")):
        points = np.array(record["curves"].get(name) or [], dtype=float).reshape(-1, 2)
        if len(points):
            ax.plot(points[:, 0], points[:, 1], style, ms=3, label=name)
    config = record["config"]
    ax.set_title(_wrap(f"{record['key']} ({record['status']}): " + ", ".join(
        f"{k}={config[k]}" for k in ("param", "optimizer", "width", "depth", "lr", "seed") if k in config)), fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    _legend(ax)
    return fig


def _short(table: Table, tables: list[Table]) -> str:
    """The part of a table's title that differs between the tables of one figure."""
    varying = [k for k in table.title if len({value_text(t.title.get(k)) for t in tables}) > 1]
    return ", ".join(f"{k}={value_text(table.title[k])}" for k in varying) or table.name


def _wrap(text: str, width: int = 70) -> str:
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + len(word) > width:
            lines.append(line)
            line = ""
        line += word + " "
    return "\n".join([*lines, line.strip()])
