"""How sure a table's optima, trend and regrets are: the noise model of the rows' eta* estimates.

docs/statistics.md states the models and their assumptions. In short, for the rows whose optimum
is closed (bracketed by worse finite cells):

- ``seeds``: where at least one row has two seeds whose own rows have a closed optimum, each seed's
  row is fitted alone (row_optimum) and the spread of those per-seed eta* about their row's mean,
  pooled over the rows (sum (n_r - 1) degrees of freedom), is the noise of one seed's eta*; a row's
  estimate from its n_r seeds' mean losses has sd s / sqrt(n_r). Whole seeds are refitted, so the
  noise that runs share across learning rates (initialisation, data order, the fixed validation
  batches) moves each seed's whole curve as it does in a real rerun.
- ``residuals``: otherwise (one seed, e.g. published numbers), the scatter of the rows' eta* about
  their least-squares line in log2(size), on rows - 2 degrees of freedom (none below three rows).
  It holds the noise plus any curvature of eta* in log2(size), so it errs wide: towards undecided.
- ``open``: an optimum on the grid's edge or against a diverged cell: a one-sided interval from half
  a step towards its worse neighbour, open on the other side.

The recorded standard error of a run's final evaluation is not used for eta*: the validation batches
are the same for every cell, so that error is shared along a row and does not move eta*.

A regret (the row's fitted loss at the reference lr above its fitted minimum) gets the interval of
curvature * (reference - eta*)^2 over eta*'s interval where the reference is one of the parabola's
points, else a t interval of the per-seed differences (or a normal one from the recorded standard
errors), clipped at 0; an open row's regret is open above.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .intervals import (
    LEVEL,
    OPEN,
    RESIDUALS,
    SEEDS,
    STANDARD_ERRORS,
    Interval,
    open_interval,
    residual_sd,
    t_interval,
    trend,
)
from .optima import RowOptimum, fitted_regret, on_parabola, row_optimum
from .tables import Table


@dataclass(frozen=True)
class RegretInterval:
    """curvature * (reference - eta*)^2 for eta* in its interval."""
    method: str
    curvature: float
    reference: float
    eta: Interval

    def bounds(self, level: float = LEVEL) -> tuple[float, float]:
        low, high = self.eta.bounds(level)
        far = max(abs(self.reference - low), abs(self.reference - high))
        near = 0.0 if low <= self.reference <= high else min(abs(self.reference - low), abs(self.reference - high))
        return self.curvature * near**2, self.curvature * far**2


class TableNoise:
    """The intervals of one table (analysis.optima.Noise): ``eta[r]`` per row, ``trend(rows)``,
    ``regret(r, lr)``; ``sd``/``df``: the pooled noise of one seed's eta* (None: from residuals)."""

    def __init__(self, table: Table, optima: list[RowOptimum]) -> None:
        self.table, self.optima = table, optima
        ran = table.runs
        self.seeds = [int(row[row > 0].min()) if (row > 0).any() else 0 for row in ran]  # the fewest per cell
        self.x = np.log2(table.sizes.astype(float))
        self.closed = [r for r, opt in enumerate(optima) if opt.lr is not None and not opt.open]
        self.sd, self.df = self._pooled()
        self.eta = [self._eta(r, opt) for r, opt in enumerate(optima)]

    def _pooled(self) -> tuple[float | None, int]:
        """The pooled sd of one seed's eta* about its row's mean, and its degrees of freedom. A seed whose
        own row is open counts at its grid value: leaving it out would drop the widest scatter."""
        t, squares, df = self.table, 0.0, 0
        for r in self.closed:
            fits = [row_optimum(t.sizes[r], t.lrs, t.seed_loss[s, r], t.seed_diverged[s, r]) for s in range(len(t.seeds))]
            per_seed = np.array([f.estimate for f in fits if f.lr is not None])
            if len(per_seed) >= 2:
                squares += float(np.sum((per_seed - per_seed.mean()) ** 2))
                df += len(per_seed) - 1
        return (math.sqrt(squares / df), df) if df else (None, 0)

    def _eta(self, r: int, opt: RowOptimum) -> Interval | None:
        if opt.lr is None:
            return None
        if opt.open:
            return open_interval(opt.estimate, opt.open, opt.open_bound, self.seeds[r])
        if self.sd is not None:
            return Interval(SEEDS, self.seeds[r], opt.estimate, self.sd / math.sqrt(max(self.seeds[r], 1)), self.df)
        scatter = residual_sd(self.x[self.closed], [self.optima[c].estimate for c in self.closed])
        return None if scatter is None else Interval(RESIDUALS, self.seeds[r], opt.estimate, scatter, len(self.closed) - 2)

    def trend(self, rows: list[int]) -> Interval | None:
        """The slope of the ``rows``' eta* (closed ones) against log2(size), with its interval."""
        estimates = [self.optima[r].estimate for r in rows]
        if self.sd is None:
            return trend(self.x[rows], estimates, runs=min(self.seeds[r] for r in rows))
        sds = [self.sd / math.sqrt(max(self.seeds[r], 1)) for r in rows]
        return trend(self.x[rows], estimates, sd=sds, df=self.df, runs=min(self.seeds[r] for r in rows))

    def mean(self, rows: list[int]) -> Interval:
        """The mean of the ``rows``' eta* (closed ones), the one eta_base of a table that transfers,
        with its interval: from the rows' noise (seeds), else from their scatter about the mean."""
        estimates = [self.optima[r].estimate for r in rows]
        center = float(np.mean(estimates))
        if self.sd is None:
            if len(rows) < 2:
                return Interval(RESIDUALS, 1, center)
            return t_interval(RESIDUALS, center, estimates)
        sd = math.sqrt(sum(self.sd**2 / max(self.seeds[r], 1) for r in rows)) / len(rows)
        return Interval(SEEDS, min(self.seeds[r] for r in rows), center, sd, self.df)

    def regret(self, r: int, reference_lr: float):
        """The interval of row r's fitted regret at ``reference_lr`` (analysis.optima.fitted_regret)."""
        t, opt = self.table, self.optima[r]
        if opt.lr is None:
            return None
        point = fitted_regret(opt, t.lrs, t.loss[r], t.diverged[r], reference_lr)
        if not math.isfinite(point):
            return None
        j, best = int(np.flatnonzero(t.lrs == reference_lr)[0]), int(np.flatnonzero(t.lrs == opt.lr)[0])
        if on_parabola(opt, t.lrs, t.loss[r], t.diverged[r], reference_lr):
            return None if self.eta[r] is None else RegretInterval(self.eta[r].method, opt.curvature, reference_lr, self.eta[r])
        differences = t.seed_loss[:, r, j] - t.seed_loss[:, r, best]
        differences = differences[np.isfinite(differences)]
        if len(differences) >= 2:
            interval = t_interval(SEEDS, point, list(differences), low=0.0)
        elif not np.isnan(t.se[r, [j, best]]).any():
            interval = Interval(STANDARD_ERRORS, 1, point, math.hypot(t.se[r, j], t.se[r, best]), low=0.0)
        else:
            interval = Interval(STANDARD_ERRORS, 1, point, low=0.0) if opt.open else None
        if interval is not None and opt.open:  # the true optimum may be better still: open above
            return open_interval(point, "above", interval.bounds(LEVEL)[0], interval.runs)
        return interval


METHOD_TEXT = {
    SEEDS: "from {runs} seed(s) per row (the per-seed fits' spread pooled over the rows, {df} df)",
    RESIDUALS: "from the scatter of eta* about its fitted trend (one seed; {df} df)",
    OPEN: "open (an edge or stability-bounded optimum; it decides nothing)",
}


def method_note(table: Table, optima: list[RowOptimum], noise: TableNoise) -> str | None:
    """Which rows' eta* intervals come from where, in one line; None when no row has one."""
    by_method: dict[str, list[str]] = {}
    for opt, interval in zip(optima, noise.eta):
        if opt.lr is None:
            continue
        if interval is None:
            key = "none (one seed and fewer than three closed rows)"
        else:
            key = METHOD_TEXT[interval.method].format(runs=interval.runs, df=f"{interval.df:g}")
        by_method.setdefault(key, []).append(f"{opt.size:g}")
    if all(key.startswith("none") for key in by_method):
        return None
    parts = [f"{key} at {table.axis} {', '.join(sizes)}" for key, sizes in by_method.items()]
    return f"eta* {LEVEL:.0%} intervals: " + "; ".join(parts)
