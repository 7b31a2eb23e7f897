"""Optimal base learning rates and transfer verdicts of one table.

A row's optimum is the grid's argmin over its finite losses, refined by the vertex of the parabola
(in log2 eta) through the best point and its two grid neighbours. A best point whose neighbour on
one side was never run (grid edge or missing cell) is an *edge* optimum: the true optimum may lie
beyond it. A diverged neighbour bounds the optimum (the loss explodes there), so it is no edge, but
the parabola cannot use it and the refined estimate falls back to the grid value.

Verdict thresholds (defaults, overridable from the CLI):
- drift: max - min of the refined log2 eta* across sizes <= 1.5. On the usual grid of one step per
  factor 2, a refined optimum that moves by less than 1.5 steps keeps the best grid LR within one
  step of every size's own optimum; the paper's muP width sweep (Table 9) drifts ~1.0, SP ~3.4.
- regret: using the smallest size's grid eta* costs at most 1% of each row's best loss. Relative,
  so it means the same on a byte-level toy dataset and on OpenWebText.

With a noise estimate (analysis.confidence: intervals per row), a threshold is judged against the
interval of the drift and of the worst regret, not their point values: ``transfers`` when the whole
interval is within it, ``does not transfer`` when the whole interval is beyond it, else
``undecided``, with the sizes and seeds that would decide it. Both intervals come from the rows'
intervals taken together at the Sidak level LEVEL^(1/k) (k rows), so that all k hold at once with
probability LEVEL: drift in [max lo - min hi, max hi - min lo], worst regret in [max lo, max hi].
Without a noise estimate the intervals are the points, and the verdict is the point verdict.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

MAX_DRIFT_LOG2 = 1.5
MAX_REGRET_FRACTION = 0.01
LEVEL = 0.90  # of every interval the report shows
TRANSFERS, NO_TRANSFER, UNDECIDED = "transfers", "does not transfer", "undecided"
MAX_MORE_SEEDS = 8  # the most seeds a suggestion adds at once


@dataclass(frozen=True)
class RowOptimum:
    size: float
    lr: float | None  # the grid's argmin (log2 eta); None when the row has no finite loss
    loss: float | None  # the row's best loss
    lr_refined: float | None  # parabola vertex; equals lr when a neighbour is unusable
    edge: str | None  # "below" | "above" when the optimum may lie beyond the best point

    def edge_note(self) -> str | None:
        if self.edge is None:
            return None
        return f"edge: the optimum may lie {self.edge} {self.lr:g}"

    @property
    def estimate(self) -> float | None:
        """The best available log2 eta*: the refined one where it exists."""
        return self.lr_refined if self.lr_refined is not None else self.lr


def parabola_vertices(xs, ys) -> np.ndarray:
    """Elementwise over arrays: the x of the vertex of the parabola through three points (x0, x1, x2),
    (y0, y1, y2); NaN where it is not a minimum."""
    (x0, x1, x2), (y0, y1, y2) = map(np.asarray, xs), map(np.asarray, ys)
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a > 0, -b / (2 * a), np.nan)


def parabola_vertex(xs: tuple[float, float, float], ys: tuple[float, float, float]) -> float | None:
    """The x of the vertex of the parabola through three points; None when it is not a minimum."""
    vertex = float(parabola_vertices(xs, ys))
    return None if math.isnan(vertex) else vertex


def refit(lrs: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """row_optimum's estimate for each row of ``losses`` (draws x lrs; NaN: missing or diverged) at
    once, for resampling: the parabola vertex where the argmin has two finite neighbours, else the grid's argmin."""
    finite = np.isfinite(losses)
    i = np.argmin(np.where(finite, losses, np.inf), axis=1)
    estimate = lrs[i].astype(float)
    rows = np.arange(len(losses))
    inner = (i > 0) & (i < len(lrs) - 1)
    inner[inner] &= finite[rows[inner], i[inner] - 1] & finite[rows[inner], i[inner] + 1]
    r, c = rows[inner], i[inner]
    vertex = parabola_vertices((lrs[c - 1], lrs[c], lrs[c + 1]),
                               (losses[r, c - 1], losses[r, c], losses[r, c + 1]))
    estimate[inner] = np.where(np.isnan(vertex), estimate[inner], vertex)
    estimate[~finite.any(axis=1)] = np.nan
    return estimate


def row_optimum(size: float, lrs: np.ndarray, loss: np.ndarray, diverged: np.ndarray) -> RowOptimum:
    """Optimum of one row: ``loss`` is NaN where a cell is missing or diverged."""
    finite = np.isfinite(loss)
    if not finite.any():
        return RowOptimum(float(size), None, None, None, None)
    i = int(np.nanargmin(np.where(finite, loss, np.inf)))
    lr, best = float(lrs[i]), float(loss[i])
    edge = None
    if i == 0 or not (finite[i - 1] or diverged[i - 1]):
        edge = "below"
    elif i == len(lrs) - 1 or not (finite[i + 1] or diverged[i + 1]):
        edge = "above"
    # refit's vertex where both neighbours are finite (then the row has no edge), else the grid's lr
    refined = float(refit(np.asarray(lrs), np.asarray(loss)[None, :])[0])
    return RowOptimum(float(size), lr, best, refined, edge)


class Interval(Protocol):
    def bounds(self, level: float) -> tuple[float, float]: ...


class Noise(Protocol):
    """What the verdict needs to know of a table's noise (analysis.confidence.TableNoise)."""
    eta: Sequence[Interval | None]  # per row: the interval of its estimate; None: none known
    seeds: Sequence[int]  # per row: the seeds its cells hold (the fewest)

    def regret(self, row: int, reference_lr: float) -> Interval | None: ...


@dataclass(frozen=True)
class Suggestion:
    """What would decide an undecided verdict: more seeds at some sizes, or a cell never run."""
    sizes: list[float]
    more_seeds: int  # 0: run ``lr`` with the seeds the rows have
    lr: float | None  # run only this lr (a regret that is unknown); None: the rows' lrs
    text: str


@dataclass(frozen=True)
class Verdict:
    outcome: str | None  # TRANSFERS | NO_TRANSFER | UNDECIDED; None: fewer than two sizes with an optimum
    drift: float | None  # max - min of the refined log2 eta*
    reference_lr: float | None  # the smallest size's grid eta*
    regrets: dict  # size -> loss at reference_lr minus the row's best (inf: diverged, nan: not run)
    summary: str
    drift_bounds: tuple[float, float] | None = None  # its LEVEL interval; None: no noise estimate
    regret_bounds: dict = field(default_factory=dict)  # size -> LEVEL interval of the regret, where known
    decide: Suggestion | None = None  # for UNDECIDED
    command: str | None = None  # decide as a sweep line (analysis.report fills it in)


def _regret(lrs: np.ndarray, loss: np.ndarray, diverged: np.ndarray, best: float, lr: float) -> float:
    j = int(np.flatnonzero(lrs == lr)[0])
    if diverged[j]:
        return math.inf
    return float(loss[j] - best)  # nan when the cell was never run


def verdict(
    axis: str,
    lrs: np.ndarray,
    loss: np.ndarray,
    diverged: np.ndarray,
    optima: list[RowOptimum],
    max_drift: float = MAX_DRIFT_LOG2,
    max_regret: float = MAX_REGRET_FRACTION,
    noise: Noise | None = None,
) -> Verdict:
    """Does the smallest size's eta* serve every size? Rows are ordered by size. Unfinished rows
    (see ``unfinished``) are named and left out of the judgement."""
    open_rows = {r: unfinished(lrs, loss[r], diverged[r], opt) for r, opt in enumerate(optima)}
    incomplete = "; ".join(f"incomplete ({k} of {n} cells) at {axis} {optima[r].size:g}"
                           for r, (k, n) in ((r, c) for r, c in open_rows.items() if c))
    rows = [r for r, opt in enumerate(optima) if opt.lr is not None and not open_rows[r]]
    if len(rows) < 2:
        text = f"n/a: fewer than two {'finished ' if incomplete else ''}{axis}s with a finite loss"
        return Verdict(None, None, None, {}, text + (f"; {incomplete}" if incomplete else ""))
    judge = _Judge(axis, lrs, loss, diverged, optima, max_drift, max_regret, noise)
    overall = judge(rows)
    if incomplete:
        overall = _with_note(overall, incomplete)
    if overall.outcome == NO_TRANSFER:
        # Where transfer only holds from some size up (the paper's Table 13: depth >= 32), say so.
        for start in range(1, len(rows) - 1):
            tail = judge(rows[start:])
            if tail.outcome == TRANSFERS:
                size = optima[rows[start]].size
                return _with_note(overall, f"transfers for {axis} >= {size:g} (eta* drift {tail.drift:.2f})")
    return overall


def _with_note(judged: Verdict, note: str) -> Verdict:
    return dataclasses.replace(judged, summary=f"{judged.summary}; {note}")


def unfinished(lrs: np.ndarray, loss: np.ndarray, diverged: np.ndarray, opt: RowOptimum) -> tuple[int, int] | None:
    """(cells run, cells of the line) for a row still being swept: its best cell has a cell of the
    line that was never run next to it, so the optimum may lie there. A row whose own cells bracket
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


def _more_seeds(point: float, low: float, high: float, threshold: float, seeds: int) -> int:
    """Seeds to add so the interval clears the threshold if the estimate stays put, assuming its
    width shrinks as 1/sqrt(seeds); at least enough for an interval from seeds (3: a t interval
    on 2 degrees of freedom), at most MAX_MORE_SEEDS."""
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
    max_drift: float
    max_regret: float
    noise: Noise | None

    def __call__(self, rows: list[int]) -> Verdict:
        optima, axis = self.optima, self.axis
        estimates = [optima[r].estimate for r in rows]
        drift = float(max(estimates) - min(estimates))
        reference = optima[rows[0]].lr
        regrets = {optima[r].size: _regret(self.lrs, self.loss[r], self.diverged[r], optima[r].loss, reference)
                   for r in rows}
        best = {optima[r].size: max(abs(optima[r].loss), 1e-12) for r in rows}
        relative = {size: regrets[size] / best[size] for size in regrets}
        worst_size = max(relative, key=lambda s: -math.inf if math.isnan(relative[s]) else relative[s])
        worst = regrets[worst_size]
        unknown = [size for size, value in regrets.items() if math.isnan(value)]

        # Joint (Sidak) bounds of each row's eta* and relative regret; a row without an interval is its point.
        joint = LEVEL ** (1 / len(rows))
        eta_at, regret_at, shown = {}, {}, {}
        for r, estimate in zip(rows, estimates):
            size = optima[r].size
            eta = self.noise.eta[r] if self.noise and not optima[r].edge else None
            eta_at[size] = eta.bounds(joint) if eta else (estimate, estimate)
            interval = self.noise.regret(r, reference) if self.noise and math.isfinite(regrets[size]) else None
            regret_at[size] = tuple(b / best[size] for b in interval.bounds(joint)) if interval else (
                (relative[size], relative[size]) if not math.isnan(relative[size]) else (-math.inf, math.inf))
            if interval:
                shown[size] = interval.bounds(LEVEL)
        lows, highs = zip(*eta_at.values())
        drift_bounds = (min(max(0.0, max(lows) - min(highs)), drift), max(max(highs) - min(lows), drift))
        worst_bounds = (max(b[0] for b in regret_at.values()), max(b[1] for b in regret_at.values()))
        has_noise = any(eta_at[s][0] != eta_at[s][1] for s in eta_at) or bool(shown)

        if drift_bounds[0] > self.max_drift or worst_bounds[0] > self.max_regret:
            outcome = NO_TRANSFER
        elif drift_bounds[1] <= self.max_drift and worst_bounds[1] <= self.max_regret:
            outcome = TRANSFERS
        else:
            outcome = UNDECIDED

        text = f"eta* drift {drift:.2f} (log2" + (f"; {_interval_text(*drift_bounds)}" if has_noise else "") + ")"
        if math.isinf(worst):
            text += f", the smallest {axis}'s eta* (log2 {reference:g}) diverges at {axis} {worst_size:g}"
        else:
            text += f", max regret {worst:.3f} ({100 * relative[worst_size]:.1f}%"
            if has_noise and all(map(math.isfinite, worst_bounds)):
                text += f"; {_interval_text(*worst_bounds, percent=True)}"
            text += f") at {axis} {worst_size:g}"
        if unknown:
            text += f"; regret unknown at {axis} " + ", ".join(f"{s:g}" for s in unknown) + f" (no run at {reference:g})"
        edges = [optima[r].size for r in rows if optima[r].edge]
        if edges:
            text += f"; edge optimum at {axis} " + ", ".join(f"{s:g}" for s in edges) + " (true drift unknown)"
        decide = None
        if outcome == UNDECIDED:
            decide = self._suggest(rows, reference, unknown, drift, drift_bounds, eta_at, relative, regret_at)
            text += f"; to decide: {decide.text}"
        return Verdict(outcome, drift, reference, regrets, f"{outcome}: {text}",
                       drift_bounds if has_noise else None, shown, decide)

    def _suggest(self, rows, reference, unknown, drift, drift_bounds, eta_at, relative, regret_at) -> Suggestion:
        axis = self.axis
        if unknown:
            return Suggestion(unknown, 0, reference, f"run log2 eta {reference:g} at {axis} "
                              + ", ".join(f"{s:g}" for s in unknown))
        sizes, more = set(), 0
        seeds = {self.optima[r].size: self.noise.seeds[r] for r in rows}
        if drift_bounds[0] <= self.max_drift < drift_bounds[1]:
            # The rows whose intervals set the bounds: the highest and lowest reaches.
            lows, highs = {s: b[0] for s, b in eta_at.items()}, {s: b[1] for s, b in eta_at.items()}
            sizes |= {max(highs, key=highs.get), min(lows, key=lows.get),
                      max(lows, key=lows.get), min(highs, key=highs.get)}
            more = _more_seeds(drift, *drift_bounds, self.max_drift, min(seeds[s] for s in sizes))
        straddling = [s for s, (lo, hi) in regret_at.items() if lo <= self.max_regret < hi]
        for size in straddling:
            more = max(more, _more_seeds(relative[size], *regret_at[size], self.max_regret, seeds[size]))
        sizes |= set(straddling)
        sizes = sorted(sizes)
        names = f"{axis}s " + ", ".join(f"{s:g}" for s in sizes[:-1]) + f" and {sizes[-1]:g}" if len(sizes) > 1 \
            else f"{axis} {sizes[0]:g}"
        return Suggestion(sizes, more, None, f"run {more} more seed{'s' * (more > 1)} at {names}")
