"""Figures (PNG and PDF) through matplotlib's object API: no pyplot, so no global backend state.

Transfer curves (SP beside muP on a shared y-axis) and eta* against size follow the paper's
Figures 1-2, with the spread over seeds (a band of +- one standard deviation) and eta*'s interval
(bars); the coordinate check plots each scale it judges against width and depth with its slope and
verdict; training curves show one cell's run. Colours: Okabe-Ito for categories, plasma for order.
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

from trainer.coord_verdict import FLAT, STEEP, final_points, verdicts

from .optima import LEVEL, RowOptimum
from .tables import Table, param_name, value_text

SEQUENTIAL = colormaps["plasma"]
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
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


def _legend(ax, handles=None, **kwargs) -> None:
    """The legend right of the axes; the figure widens (the axes keep their size) where its longest
    line would run past the edge, estimated from its length in characters: no layout pass."""
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    labels = [h.get_label() for h in handles]
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
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False, **kwargs)


def _colors(n: int) -> list:
    """Ordered colours (sizes, steps): plasma from dark blue to orange, short of its pale yellow end."""
    return [SEQUENTIAL(x) for x in np.linspace(0.0, 0.8, n)] if n > 1 else [SEQUENTIAL(0.0)]


def _categorical(n: int) -> list:
    """Colours of things that have no order (tables, parameterizations): Okabe and Ito's, which
    colour-blind readers tell apart, without their yellow, which vanishes on white."""
    return [OKABE_ITO[i % len(OKABE_ITO)] for i in range(n)]


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


def _transfer_panel(ax, table: Table, optima: list[RowOptimum], colors, top: float) -> dict[str, bool]:
    """One table's curves in ``ax``: val loss against log2 eta, a line per size, a band of +- one
    standard deviation over the seeds, a star at each row's optimum, x on the top edge where a cell
    diverged, a triangle there for a finite loss above ``top``. Returns which marks it drew."""
    drawn = {"band": False}
    for r, color in enumerate(colors):
        finite = np.isfinite(table.loss[r])
        if finite.any():
            ax.plot(table.lrs[finite], table.loss[r, finite], "-o", color=color, ms=3.5,
                    label=f"{table.axis} {value_text(table.sizes[r])}")
            spread = np.nan_to_num(table.spread[r, finite])
            if spread.any():
                loss = table.loss[r, finite]
                ax.fill_between(table.lrs[finite], loss - spread, loss + spread, color=color, alpha=0.2, lw=0)
                drawn["band"] = True
    # One scatter per marker kind, not per row: each artist costs layout time on every save.
    rows, cols = np.nonzero(np.isfinite(table.loss) & (table.loss > top))
    ax.scatter(table.lrs[cols], np.full(len(cols), top), marker="^", c=np.array(colors)[rows].reshape(-1, 4),
               clip_on=False, zorder=3)
    drawn["off the top"] = len(rows) > 0
    rows, cols = np.nonzero(table.diverged)
    ax.scatter(table.lrs[cols], np.full(len(cols), top), marker="x", color="black", s=40, clip_on=False, zorder=3)
    drawn["diverged"] = len(rows) > 0
    best = [(r, o.lr, o.loss) for r, o in enumerate(optima) if o.lr is not None]
    if best:
        rows, lrs, losses = map(np.array, zip(*best))
        ax.scatter(lrs, losses, marker="*", s=140, c=np.array(colors)[rows].reshape(-1, 4), edgecolors="black",
                   linewidths=0.6, zorder=4)
    drawn["optimum"] = bool(best)
    ax.set_xlabel(LR_LABEL)
    ax.grid(alpha=0.3)
    return drawn


MARKS = {"optimum": ("*", "optimum (row's best)"), "diverged": ("x", "diverged (drawn on the top edge)"),
         "off the top": ("^", "loss above the axis"), "band": (None, "band: ± sd over seeds")}


def _mark_handles(drawn: dict[str, bool]) -> list:
    """Legend entries for the marks actually drawn, and only those."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    for name, (marker, text) in MARKS.items():
        if drawn.get(name):
            handles.append(Patch(color="grey", alpha=0.3, label=text) if marker is None else
                           Line2D([], [], ls="", marker=marker, color="black", mfc="white" if marker == "*" else None,
                                  ms=9 if marker == "*" else 6, label=text))
    return handles


def transfer(tables: list[Table], optima: list[list[RowOptimum]], names: list[str], title: str) -> Figure:
    """The paper's Figure 1 layout: one panel per table (SP beside muP), on a shared y-axis, val loss
    against log2 eta_base, a line per size; ``names``: each panel's title (e.g. 'SP: does not transfer')."""
    fig = _figure(len(tables))
    axes = fig.subplots(1, len(tables), sharey=True, squeeze=False)[0]
    finite = [t for t in tables if np.isfinite(t.loss).any()]
    ranges = [y_range(t) for t in finite] or [(0.0, 1.0)]
    low, top = min(r[0] for r in ranges), max(r[1] for r in ranges)
    sizes = sorted({float(s) for t in tables for s in t.sizes})
    palette = dict(zip(sizes, _colors(len(sizes))))  # a size has one colour in every panel
    drawn: dict[str, bool] = {}
    for ax, table, opts, name in zip(axes, tables, optima, names):
        colors = [palette[float(s)] for s in table.sizes]
        for mark, present in _transfer_panel(ax, table, opts, colors, top).items():
            drawn[mark] = drawn.get(mark, False) or present
        ax.set_title(name, fontsize=10)
    axes[0].set_ylim(low, top)
    axes[0].set_ylabel("final validation loss")
    fig.suptitle(_wrap(title, 90), fontsize=10)
    by_label = {}
    for ax in axes:  # the sizes of every panel, once each
        for handle, text in zip(*ax.get_legend_handles_labels()):
            by_label.setdefault(text, handle)
    ordered = sorted(by_label, key=lambda text: float(text.split()[-1]))
    handles = [by_label[text] for text in ordered] + _mark_handles(drawn)
    _legend(axes[-1], handles=handles)
    return fig


def _dodge(k: int, n: int) -> float:
    """A factor on the x (log2) axis that sets the k-th of n lines' points apart, so their bars do not
    overlap: +-0.06 of a doubling around the true size."""
    return 2.0 ** (0.12 * (k - (n - 1) / 2) / max(n - 1, 1)) if n > 1 else 1.0


def eta_star(axis: str, tables: list[Table], optima: list[list[RowOptimum]],
             intervals: list[list[tuple[float, float]]], labels: list[str] | None = None,
             title: str | None = None) -> Figure:
    """Refined log2 eta* against size, one line per table (``labels``, e.g. SP and muP), each row's
    interval as a bar, the lines set slightly apart so bars do not overlap; hollow markers: open
    optima (on the grid's edge or against a diverged cell), explained in the legend when drawn."""
    from matplotlib.lines import Line2D

    fig = _figure()
    ax = fig.add_subplot()
    labels = labels or [_short(t, tables) for t in tables]
    markers = "osD^vP"
    any_open = has_bars = False
    for k, (table, opts, bounds, color, label) in enumerate(zip(tables, optima, intervals,
                                                               _categorical(len(tables)), labels)):
        points = [(o.size, o.estimate, o.open, *b) for o, b in zip(opts, bounds) if o.lr is not None]
        if not points:
            continue
        sizes, etas, edges, lows, highs = map(np.array, zip(*points))
        x = sizes.astype(float) * _dodge(k, len(tables))
        marker = markers[k % len(markers)]
        ax.plot(x, etas, "-", color=color, marker=marker, mfc=color, label=_wrap(label, LEGEND_WIDTH))
        known = np.isfinite(lows) & np.isfinite(highs)  # an open interval: the hollow marker says it
        if known.any():
            has_bars = True
            ax.errorbar(x[known], etas[known], yerr=[etas[known] - lows[known], highs[known] - etas[known]],
                        fmt="none", ecolor=color, elinewidth=1, capsize=3, zorder=2)
        edge = edges != None  # noqa: E711 -- elementwise over an object array
        if edge.any():
            any_open = True
            ax.scatter(x[edge], etas[edge], marker=marker, facecolors="white", edgecolors=color, zorder=3, s=40)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({float(s) for t in tables for s in t.sizes}))
    ax.get_xaxis().set_major_formatter(lambda value, _: f"{value:g}")
    ax.set_xlabel(axis)
    ax.set_ylabel("optimal log₂ η_base")
    ax.set_title(_wrap(title or f"Optimal η_base against {axis}", 60), fontsize=10)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if any_open:
        handles.append(Line2D([], [], ls="", marker="o", mfc="white", mec="black",
                              label="hollow: open optimum (grid edge\nor diverged neighbour)"))
    if has_bars:
        handles.append(Line2D([], [], color="black", marker="|", ms=10, ls="-", lw=0, label=f"bar: {LEVEL:.0%} interval"))
    _legend(ax, handles=handles)
    return fig


def coord_check(rows: pd.DataFrame, title: str) -> Figure:
    """The coordinate check (trainer.coord_check) of one optimizer: after the last step, each scale
    (h and Δh of the last block, Δlogits, and ΔW1·x where the file has it) against width (at the
    smallest depth) and against depth (at the smallest width), mean over seeds, a line per
    parameterization; its log2-log2 slope and trainer.coord_verdict's judgement in the legend
    (✓ flat, ✗ not flat, ? unclear), so the scale that fails shows."""

    records = rows.to_dict("records")
    points = final_points(records)
    judged = {v.param: v for v in verdicts(records)}
    params = sorted(judged, key=lambda p: (p != "sp", p))  # SP first, as in the paper
    panels = [(axis, name) for name in dict.fromkeys(n for found in points.values() for _, n in found)
              for axis in ("width", "depth") if any((axis, name) in found for found in points.values())]
    names = list(dict.fromkeys(name for _, name in panels))
    axes_present = [a for a in ("width", "depth") if any(axis == a for axis, _ in panels)]
    fig = Figure(figsize=(3.3 * len(axes_present) + 2.6, 2.4 * len(names) + 1.0))
    fig.subplots_adjust(left=0.09, right=0.7, top=1 - 0.9 / fig.get_figheight(), bottom=0.5 / fig.get_figheight(),
                        hspace=0.5, wspace=0.35)
    grid = fig.subplots(len(names), len(axes_present), squeeze=False)
    colors = dict(zip(params, _categorical(len(params))))
    mark = lambda slope: "✓" if abs(slope) <= FLAT else "✗" if abs(slope) >= STEEP else "?"  # noqa: E731
    for i, name in enumerate(names):
        for j, axis in enumerate(axes_present):
            ax, spans = grid[i][j], []
            for param in params:
                found = points[(param, judged[param].optimizer)].get((axis, name))
                if not found:
                    continue
                sizes = sorted(found)
                slope = judged[param].slopes.get((axis, name))
                means = np.array([np.mean(found[s]) for s in sizes])
                ratio = means / means[0]
                spans.append(ratio)
                ax.plot(sizes, ratio, "-o", ms=3.5, color=colors[param],
                        label=f"{param_name(param)} {slope:+.2f} {mark(slope)}" if slope is not None else param_name(param))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)  # relative to the smallest size: flat is flat, growth a slope
            values = np.concatenate(spans) if spans else np.ones(1)
            ax.set_ylim(min(0.5, values.min() / 1.2), max(2.0, values.max() * 1.2))
            for scale in (ax.get_xaxis(), ax.get_yaxis()):
                scale.set_major_formatter(lambda value, _: f"{value:g}")
                scale.set_minor_formatter(lambda value, _: "")
            ax.set_xticks(sorted({s for found in points.values() for s in found.get((axis, name), {})}))
            ax.set_title(f"{name} over {axis}", fontsize=9)
            ax.set_xlabel(axis, fontsize=8)
            ax.set_ylabel("RMS / RMS at smallest", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, frameon=False, title="slope", title_fontsize=7, loc="best")
    from matplotlib.lines import Line2D

    verdict_handles = [Line2D([], [], color=colors[p], marker="o", ms=4,
                              label=f"{param_name(p)}: {judged[p].verdict}") for p in params]
    fig.legend(handles=verdict_handles, loc="upper left", bbox_to_anchor=(0.72, 1 - 0.9 / fig.get_figheight()),
               fontsize=8, frameon=False, title=f"verdict\n(slope of log₂ RMS\nagainst log₂ size\nafter the last step;\n"
               f"✓ flat: |slope| ≤ {FLAT}\n✗ not flat: ≥ {STEEP}\n? unclear: between)", title_fontsize=7)
    fig.suptitle(_wrap(title, 80), fontsize=10)
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
