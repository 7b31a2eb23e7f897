"""How sure a table's optima and regrets are: an interval for each row's eta* and each regret.

Each row's interval comes from the first of these that the data allow; the report states which:

- ``seeds``: where at least two seeds each give the row an interior optimum, each seed's row is
  fitted alone (row_optimum) and the interval is a Student t interval of the mean of those
  per-seed eta*, around the row's estimate from the seed-averaged losses. A seed's cells share its
  initialisation and data order, so refitting whole seeds keeps the noise that runs share across
  learning rates, which resampling single cells would not.
- ``bootstrap``: otherwise, from the standard errors the runs recorded at their final evaluation
  (the spread over the eval batches): each cell's loss is redrawn from a normal with that standard
  error, the row refitted each time (DRAWS times), and the interval is the draws' percentiles.
  That is evaluation noise only: a second seed's spread (initialisation, data order) is not in it.
- none: an optimum on the grid's edge (the interval is unbounded on one side), or a row without
  seeds or recorded standard errors (published numbers): the report shows no interval.

A regret (loss at the reference lr minus the row's best) gets a t interval of the per-seed
differences where two seeds ran both cells, else a normal one from the two cells' standard errors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .optima import LEVEL, RowOptimum, refit, row_optimum

if TYPE_CHECKING:
    from .tables import Table  # which imports this module for its notes

DRAWS = 2000  # bootstrap refits per row: its 5% and 95% percentiles move by ~0.5% of the width
SEEDS, BOOTSTRAP, STANDARD_ERRORS = "seeds", "bootstrap", "standard errors"


@dataclass(frozen=True)
class Interval:
    """A t interval (center +- t * scale; df inf: normal) or, with ``draws``, a percentile interval."""
    method: str  # SEEDS | BOOTSTRAP | STANDARD_ERRORS
    runs: int  # the seeds it rests on
    center: float
    scale: float = 0.0
    df: float = math.inf
    draws: np.ndarray | None = None

    def bounds(self, level: float = LEVEL) -> tuple[float, float]:
        if self.draws is not None:
            low, high = np.quantile(self.draws, [(1 - level) / 2, (1 + level) / 2])
            return float(low), float(high)
        from scipy import stats  # here: importing scipy.stats takes ~0.5 s, which `--help` need not wait for

        half = float(stats.t.ppf((1 + level) / 2, self.df)) * self.scale
        return self.center - half, self.center + half


def t_interval(method: str, center: float, values: list[float]) -> Interval:
    n = len(values)
    return Interval(method, n, center, float(np.std(values, ddof=1)) / math.sqrt(n), n - 1)


class TableNoise:
    """The intervals of one table (analysis.optima.Noise): ``eta[r]`` per row, ``regret(r, lr)``."""

    def __init__(self, table: Table, optima: list[RowOptimum], seed: int = 0) -> None:
        self.table = table
        ran = table.runs
        self.seeds = [int(row[row > 0].min()) if (row > 0).any() else 0 for row in ran]  # the fewest per cell
        rng = np.random.default_rng(seed)  # a report is reproducible
        self.eta = [self._eta(r, opt, rng) for r, opt in enumerate(optima)]

    def _eta(self, r: int, opt: RowOptimum, rng: np.random.Generator) -> Interval | None:
        t = self.table
        if opt.lr is None or opt.edge:
            return None
        fits = [row_optimum(opt.size, t.lrs, t.seed_loss[s, r], t.seed_diverged[s, r]) for s in range(len(t.seeds))]
        per_seed = [fit.estimate for fit in fits if fit.lr is not None and not fit.edge]
        if len(per_seed) >= 2:
            return t_interval(SEEDS, opt.estimate, per_seed)
        finite = np.isfinite(t.loss[r])
        if np.isnan(t.se[r][finite]).any():
            return None
        draws = t.loss[r] + np.nan_to_num(t.se[r]) * rng.standard_normal((DRAWS, len(t.lrs)))
        return Interval(BOOTSTRAP, self.seeds[r], opt.estimate, draws=refit(t.lrs, draws))

    def regret(self, r: int, reference_lr: float) -> Interval | None:
        """The interval of row r's loss at ``reference_lr`` minus its best cell's (the grid argmin)."""
        t = self.table
        finite = np.isfinite(t.loss[r])
        if not finite.any():
            return None
        j, best = int(np.flatnonzero(t.lrs == reference_lr)[0]), int(np.nanargmin(np.where(finite, t.loss[r], np.nan)))
        center = float(t.loss[r, j] - t.loss[r, best])
        differences = t.seed_loss[:, r, j] - t.seed_loss[:, r, best]
        differences = differences[np.isfinite(differences)]
        if len(differences) >= 2:
            return t_interval(SEEDS, center, list(differences))
        if math.isnan(center) or np.isnan(t.se[r, [j, best]]).any():
            return None
        return Interval(STANDARD_ERRORS, 1, center, 0.0 if j == best else math.hypot(t.se[r, j], t.se[r, best]))


def method_note(table: Table, optima: list[RowOptimum], noise: TableNoise) -> str | None:
    """Which rows' eta* intervals come from where, in one line; None when no row has one."""
    by_method: dict[str, list[str]] = {}
    for opt, interval in zip(optima, noise.eta):
        if opt.lr is None:
            continue
        if interval is None:
            key = ("none (an edge optimum)" if opt.edge
                   else "none (fewer than two seeds with an inner optimum, and no recorded standard errors)")
        elif interval.method == SEEDS:
            key = f"from {interval.runs} seeds (t interval of the per-seed fits)"
        else:
            key = "from a bootstrap over the recorded standard errors (evaluation noise only)"
        by_method.setdefault(key, []).append(f"{opt.size:g}")
    if all(key.startswith("none") for key in by_method):
        return None
    parts = [f"{key} at {table.axis} {', '.join(sizes)}" for key, sizes in by_method.items()]
    return f"eta* {LEVEL:.0%} intervals: " + "; ".join(parts)
