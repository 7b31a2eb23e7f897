"""Optimal base learning rates and transfer verdicts of one table.

A row's optimum is the grid's argmin over its finite losses, refined by the vertex of the parabola
(in log2 eta) through the best point and the nearest point the row ran on each side. An optimum is
*open* when the data do not bracket it: on the grid's *edge* (the row ran nothing on one side of its
best point), or *bounded* by a diverged neighbour (the optimum is set by the stability
limit, not by an interior minimum; a longer warmup could move it). An open optimum keeps the grid's
value, gets a one-sided interval (analysis.confidence) and never decides a verdict.

The verdict (docs/statistics.md) is decided on the trend of eta* per doubling of size: the
least-squares slope of the closed rows' refined log2 eta* against log2(size), with its LEVEL
interval (analysis.confidence gives the rows' noise). ``transfers`` when that interval lies within
+-MAX_TREND and every row is closed, ``does not transfer`` when it lies beyond (or the smallest
size's eta* diverges at a larger size), else ``undecided``, with the cells that would decide it.
MAX_TREND = 0.25 log2 per doubling: over 16x in size eta* moves by at most one grid step of a
factor 2; the paper's muP width sweep (Table 9) moves ~0.2 per doubling, SP's (Table 8) ~0.6.
max - min of the estimates (the drift) and the regret of the smallest size's eta* are descriptive.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from .intervals import LEVEL, Interval, trend, trend_weights

MAX_TREND = 0.25  # log2 eta* per doubling of size
TRANSFERS, NO_TRANSFER, UNDECIDED = "transfers", "does not transfer", "undecided"
MAX_MORE_SEEDS = 8  # the most seeds a suggestion adds at once


@dataclass(frozen=True)
class RowOptimum:
    size: float
    lr: float | None  # the grid's argmin (log2 eta); None when the row has no finite loss
    loss: float | None  # the row's best loss
    lr_refined: float | None  # parabola vertex; equals lr when a neighbour is unusable
    edge: str | None  # "below" | "above" when the optimum may lie beyond the best point (never run there)
    bounded: str | None = None  # "below" | "above": the neighbour on that side diverged
    curvature: float | None = None  # the parabola's loss per (log2 eta)^2, where refined
    step: float | None = None  # to the worse neighbour on the closed side of an open optimum
    gap: float | None = None  # to the diverged neighbour of a stability-bounded optimum

    def edge_note(self) -> str | None:
        if self.edge is not None:
            return f"edge: the optimum may lie {self.edge} {self.lr:g}"
        if self.bounded is not None:
            return (f"stability-bounded: the {self.bounded} neighbour of {self.lr:g} diverged, so the optimum "
                    f"may lie {self.bounded} {self.lr:g} (set by the stability limit, not an interior minimum)")
        return None

    @property
    def open(self) -> str | None:
        """The side the true optimum may lie beyond: an edge or a stability-bounded optimum."""
        return self.edge or self.bounded

    @property
    def open_bound(self) -> float | None:
        """The closed end of an open optimum's interval: half a step from the best point towards its
        worse neighbour (a worse neighbour puts the minimum of a convex curve on this side of the
        midpoint); the best point itself when there is none."""
        if self.open is None:
            return None
        sign = -1 if self.open == "above" else 1
        return self.lr + sign * (self.step or 0.0) / 2

    @property
    def estimate(self) -> float | None:
        """The best available log2 eta*: the refined one where it exists."""
        return self.lr_refined if self.lr_refined is not None else self.lr

    def closing_lrs(self) -> list[float]:
        """The lrs that would close an open optimum: two grid steps beyond an edge, half a step
        towards a diverged neighbour."""
        if self.open is None:
            return []
        sign, step = (1 if self.open == "above" else -1), self.step or 1.0
        if self.edge:
            return [self.lr + sign * step, self.lr + 2 * sign * step]
        return [self.lr + sign * (self.gap or step) / 2]


def parabola_vertices(xs, ys) -> np.ndarray:
    """Elementwise over arrays: the x of the vertex of the parabola through three points (x0, x1, x2),
    (y0, y1, y2); NaN where it is not a minimum."""
    return _parabolas(xs, ys)[0]


def _parabolas(xs, ys) -> tuple[np.ndarray, np.ndarray]:
    """(vertex x, curvature a) of the parabolas y = a x^2 + b x + c through three points; NaN vertex
    where a <= 0."""
    (x0, x1, x2), (y0, y1, y2) = map(np.asarray, xs), map(np.asarray, ys)
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a > 0, -b / (2 * a), np.nan), a


def parabola_vertex(xs: tuple[float, float, float], ys: tuple[float, float, float]) -> float | None:
    """The x of the vertex of the parabola through three points; None when it is not a minimum."""
    vertex = float(parabola_vertices(xs, ys))
    return None if math.isnan(vertex) else vertex


def row_optimum(size: float, lrs: np.ndarray, loss: np.ndarray, diverged: np.ndarray) -> RowOptimum:
    """Optimum of one row: ``loss`` is NaN where a cell is missing or diverged. The best cell's
    neighbours are the nearest cells the row ran: a column another row added (a half step, a closing
    cell) leaves this row's bracket as it was."""
    lrs, loss, diverged = np.asarray(lrs, float), np.asarray(loss, float), np.asarray(diverged, bool)
    finite = np.isfinite(loss)
    if not finite.any():
        return RowOptimum(float(size), None, None, None, None)
    run = np.flatnonzero(finite | diverged)
    i = int(np.nanargmin(np.where(finite, loss, np.inf)))
    k = int(np.flatnonzero(run == i)[0])
    below, above = (int(run[k - 1]) if k > 0 else None), (int(run[k + 1]) if k + 1 < len(run) else None)
    lr, best = float(lrs[i]), float(loss[i])
    edge = bounded = step = curvature = gap = None
    if below is None:
        edge = "below"
    elif above is None:
        edge = "above"
    elif diverged[above]:
        bounded = "above"
    elif diverged[below]:
        bounded = "below"
    side = edge or bounded
    if side:  # the step to the worse neighbour on the closed side, for the open interval's bound
        j = below if side == "above" else above
        step = float(abs(lrs[j] - lr)) if j is not None and finite[j] else None
    if bounded:
        gap = float(abs(lrs[above if bounded == "above" else below] - lr))
    refined = lr
    if side is None:
        vertex, a = _parabolas((lrs[below], lr, lrs[above]), (loss[below], best, loss[above]))
        if not np.isnan(vertex):
            refined, curvature = float(vertex), float(a)
    return RowOptimum(float(size), lr, best, refined, edge, bounded, curvature, step, gap)


def on_parabola(opt: RowOptimum, lrs: np.ndarray, loss: np.ndarray, diverged: np.ndarray, lr: float) -> bool:
    """Whether ``lr`` is one of the three points of the row's fitted parabola: the best cell or a
    nearest cell the row ran on either side of it."""
    if opt.curvature is None:
        return False
    lrs = np.asarray(lrs, float)
    ran = np.isfinite(np.asarray(loss, float)) | np.asarray(diverged, bool)
    low, high = sorted((lr, opt.lr))
    return not (ran & (lrs > low) & (lrs < high)).any()


class Noise(Protocol):
    """What the verdict needs to know of a table's noise (analysis.confidence.TableNoise)."""
    eta: Sequence[Interval | None]  # per row: the interval of its estimate; None: none known
    seeds: Sequence[int]  # per row: the seeds its cells hold (the fewest)

    def trend(self, rows: list[int]) -> Interval | None: ...

    def regret(self, row: int, reference_lr: float) -> Interval | None: ...


@dataclass(frozen=True)
class Suggestion:
    """What would decide an undecided verdict: more seeds at some sizes, or cells never run."""
    sizes: list[float]
    more_seeds: int  # 0: run ``lrs`` with the seeds the rows have
    lr: float | None  # run only this lr (a regret that is unknown); None: see ``lrs``
    text: str
    lrs: list[float] | None = None  # the lrs that close open optima; None: the rows' lrs (or ``lr``)


@dataclass(frozen=True)
class Verdict:
    outcome: str | None  # TRANSFERS | NO_TRANSFER | UNDECIDED; None: fewer than two sizes with an optimum
    drift: float | None  # max - min of the refined log2 eta* (descriptive)
    reference_lr: float | None  # the smallest size's grid eta*
    regrets: dict  # size -> fitted regret at reference_lr (inf: diverged, nan: not run)
    summary: str
    drift_bounds: tuple[float, float] | None = None  # kept for summary.csv; the drift has no interval now
    regret_bounds: dict = field(default_factory=dict)  # size -> LEVEL interval of the regret, where known
    decide: Suggestion | None = None  # for UNDECIDED
    command: str | None = None  # decide as a sweep line (analysis.report fills it in)
    trend: float | None = None  # log2 eta* per doubling of size, over the closed rows
    trend_bounds: tuple[float, float] | None = None  # its LEVEL interval; None: no noise estimate
    trend_method: str = ""  # intervals.SEEDS | RESIDUALS
    doublings: float | None = None  # the span of sizes judged, log2(largest / smallest)
    close: Suggestion | None = None  # the cells that would close the open optima, where there are any
    close_command: str | None = None  # close as a sweep line (analysis.report fills it in)


def fitted_regret(opt: RowOptimum, lrs: np.ndarray, loss: np.ndarray, diverged: np.ndarray, lr: float) -> float:
    """The loss at ``lr`` above the row's fitted minimum: on the row's parabola (the best cell and its
    neighbours) where ``lr`` is one of its points, else the cell's loss above the parabola's minimum.
    Not the cell minus the row's best cell: that best was picked from the same noisy losses (the
    winner's curse) and is biased low. inf: diverged at ``lr``; nan: never run there."""
    j = int(np.flatnonzero(lrs == lr)[0])
    if diverged[j]:
        return math.inf
    if math.isnan(loss[j]):
        return math.nan
    if on_parabola(opt, lrs, loss, diverged, lr):
        return opt.curvature * (lr - opt.lr_refined) ** 2
    fitted_min = opt.loss - (opt.curvature or 0.0) * (opt.lr - opt.lr_refined) ** 2
    return max(0.0, float(loss[j] - fitted_min))


def verdict(
    axis: str,
    lrs: np.ndarray,
    loss: np.ndarray,
    diverged: np.ndarray,
    optima: list[RowOptimum],
    max_trend: float = MAX_TREND,
    noise: Noise | None = None,
) -> Verdict:
    """Does the smallest size's eta* serve every size? Rows are ordered by size. Unfinished rows
    (see ``unfinished``) are named and left out of the judgement. Without ``noise`` the trend's
    interval comes from the residual scatter of the rows' estimates (one seed's fallback)."""
    open_rows = {r: unfinished(lrs, loss[r], diverged[r], opt) for r, opt in enumerate(optima)}
    incomplete = "; ".join(f"incomplete ({k} of {n} cells) at {axis} {optima[r].size:g}"
                           for r, (k, n) in ((r, c) for r, c in open_rows.items() if c))
    rows = [r for r, opt in enumerate(optima) if opt.lr is not None and not open_rows[r]]
    if len(rows) < 2:
        text = f"n/a: fewer than two {'finished ' if incomplete else ''}{axis}s with a finite loss"
        return Verdict(None, None, None, {}, text + (f"; {incomplete}" if incomplete else ""))
    judge = _Judge(axis, np.asarray(lrs, float), loss, diverged, optima, max_trend, noise)
    overall = judge(rows)
    if incomplete:
        overall = _with_note(overall, incomplete)
    if overall.outcome == NO_TRANSFER:
        # Where transfer only holds from some size up (the paper's Table 13: depth >= 32), say so.
        for start in range(1, len(rows) - 1):
            tail = judge(rows[start:])
            if tail.outcome == TRANSFERS:
                size = optima[rows[start]].size
                return _with_note(overall, f"transfers for {axis} >= {size:g} (eta* trend {tail.trend:+.2f} "
                                           f"log2 per doubling; {_interval_text(*tail.trend_bounds)})")
    return overall


def _with_note(judged: Verdict, note: str) -> Verdict:
    return dataclasses.replace(judged, summary=f"{judged.summary}; {note}")


def unfinished(lrs: np.ndarray, loss: np.ndarray, diverged: np.ndarray, opt: RowOptimum) -> tuple[int, int] | None:
    """(cells run, cells of the line) for a row still being swept: the row ran nothing on one side of
    its best cell, where the line goes on, so the optimum may lie there. A row whose own cells bracket
    its optimum is judged whatever else is missing; so is one whose best cell is at the line's end."""
    if opt.edge is None or opt.lr is None:
        return None
    ran = np.isfinite(loss) | diverged
    i = int(np.flatnonzero(lrs == opt.lr)[0]) + (-1 if opt.edge == "below" else 1)
    if 0 <= i < len(lrs) and not ran[i]:
        return int(ran.sum()), len(lrs)
    return None


def _interval_text(low: float, high: float, percent: bool = False) -> str:
    scale, unit, digits = (100, "%", 1) if percent else (1, "", 2)
    return f"{LEVEL:.0%} interval {scale * low:.{digits}f}{unit} to {scale * high:.{digits}f}{unit}"


def _sizes_text(axis: str, sizes) -> str:
    sizes = sorted(sizes)
    if len(sizes) == 1:
        return f"{axis} {sizes[0]:g}"
    return f"{axis}s " + ", ".join(f"{s:g}" for s in sizes[:-1]) + f" and {sizes[-1]:g}"


def _more_seeds(point: float, low: float, high: float, threshold: float, seeds: int) -> int:
    """Seeds to add so the interval clears the threshold if the estimate stays put, assuming its
    width shrinks as 1/sqrt(seeds); at least enough for an interval from seeds (3), at most
    MAX_MORE_SEEDS."""
    margin, half = abs(point - threshold), (high - low) / 2
    need = math.inf if margin == 0 else seeds * (half / margin) ** 2
    total = max(3, seeds + 1, math.ceil(min(need, seeds + MAX_MORE_SEEDS)))
    return min(total, seeds + MAX_MORE_SEEDS) - seeds


@dataclass
class _Judge:
    axis: str
    lrs: np.ndarray
    loss: np.ndarray
    diverged: np.ndarray
    optima: list[RowOptimum]
    max_trend: float
    noise: Noise | None

    def __call__(self, rows: list[int]) -> Verdict:
        optima, axis = self.optima, self.axis
        estimates = [optima[r].estimate for r in rows]
        drift = float(max(estimates) - min(estimates))
        reference = optima[rows[0]].lr
        regrets = {optima[r].size: fitted_regret(optima[r], self.lrs, self.loss[r], self.diverged[r], reference)
                   for r in rows}
        best = {optima[r].size: max(abs(optima[r].loss), 1e-12) for r in rows}
        relative = {size: regrets[size] / best[size] for size in regrets}
        worst_size = max(relative, key=lambda s: -math.inf if math.isnan(relative[s]) else relative[s])
        unknown = [size for size, value in regrets.items() if math.isnan(value)]
        shown = {}
        for r in rows:
            interval = self.noise.regret(r, reference) if self.noise and math.isfinite(regrets[optima[r].size]) else None
            if interval:
                shown[optima[r].size] = interval.bounds(LEVEL)

        opened = [r for r in rows if optima[r].open]
        closed = [r for r in rows if not optima[r].open]
        fit = slope = None
        if len(closed) >= 2:
            x, ys = np.log2([optima[r].size for r in closed]), [optima[r].estimate for r in closed]
            slope = float(trend_weights(x) @ np.asarray(ys))
            fit = self.noise.trend(closed) if self.noise else trend(x, ys)
        bounds = fit.bounds(LEVEL) if fit else None
        doublings = float(np.log2(optima[rows[-1]].size / optima[rows[0]].size))

        diverges = math.isinf(regrets[worst_size])
        if diverges:
            outcome = NO_TRANSFER
        elif bounds is None:
            outcome = UNDECIDED
        elif bounds[0] > self.max_trend or bounds[1] < -self.max_trend:
            outcome = NO_TRANSFER
        elif -self.max_trend <= bounds[0] and bounds[1] <= self.max_trend and not opened:
            outcome = TRANSFERS
        else:
            outcome = UNDECIDED

        if slope is None:
            text = f"no eta* trend (fewer than two {axis}s with a closed optimum)"
        else:
            text = f"eta* trend {slope:+.2f} log2 per doubling of {axis}"
            text += f" ({_interval_text(*bounds)}" if bounds else " (no interval: one seed and fewer than three closed rows"
            text += f"; threshold +-{self.max_trend:g})"
        text += f", drift {drift:.2f} over {doublings:g} doubling{'s' * (doublings != 1)}"
        worst = regrets[worst_size]
        if diverges:
            text += f", the smallest {axis}'s eta* (log2 {reference:g}) diverges at {axis} {worst_size:g}"
        elif not math.isnan(worst):
            text += f", max regret {worst:.3f} ({100 * relative[worst_size]:.1f}%"
            if worst_size in shown and math.isfinite(shown[worst_size][1]):
                low, high = (b / best[worst_size] for b in shown[worst_size])
                text += f"; {_interval_text(low, high, percent=True)}"
            text += f") at {axis} {worst_size:g}"
        if unknown:
            text += f"; regret unknown at {axis} " + ", ".join(f"{s:g}" for s in unknown) + f" (no run at {reference:g})"
        if opened:
            text += f"; open optimum at {_sizes_text(axis, [optima[r].size for r in opened])} (decides nothing)"
        decide = None
        if outcome == UNDECIDED:
            decide = self._suggest(rows, closed, opened, reference, unknown, slope, bounds)
            text += f"; to decide: {decide.text}"
        return Verdict(outcome, drift, reference, regrets, f"{outcome}: {text}", None, shown, decide,
                       trend=slope, trend_bounds=bounds, trend_method=fit.method if fit else "", doublings=doublings,
                       close=self._close(opened) if opened else None)

    def _close(self, opened: list[int]) -> Suggestion:
        optima = self.optima
        lrs = sorted({lr for r in opened for lr in optima[r].closing_lrs()})
        sizes = [optima[r].size for r in opened]
        return Suggestion(sizes, 0, None, "close the open optima: run log2 eta " + ", ".join(f"{v:g}" for v in lrs)
                          + f" at {_sizes_text(self.axis, sizes)}", lrs)

    def _suggest(self, rows, closed, opened, reference, unknown, slope, bounds) -> Suggestion:
        axis, optima = self.axis, self.optima
        if unknown:
            return Suggestion(unknown, 0, reference, f"run log2 eta {reference:g} at {axis} "
                              + ", ".join(f"{s:g}" for s in unknown))
        if opened:
            return self._close(opened)
        sizes = [optima[r].size for r in closed]
        seeds = min(self.noise.seeds[r] for r in closed) if self.noise else 1
        more = max(3 - seeds, 1) if bounds is None else _more_seeds(abs(slope), *bounds, self.max_trend, seeds)
        return Suggestion(sizes, more, None, f"run {more} more seed{'s' * (more > 1)} at {_sizes_text(axis, sizes)}")
