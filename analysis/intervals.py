"""Intervals of the analysis (a t interval, or an open one) and the trend of eta* per doubling of size.

The trend is the least-squares slope b of the rows' log2 eta* estimates y_r against x_r = log2(size):
b = sum_r w_r y_r with w_r = (x_r - mean x) / sum (x - mean x)^2, so Var b = sum_r w_r^2 sd_r^2 for
independent row estimates with standard deviations sd_r. docs/statistics.md states the noise models
that give sd_r (analysis.confidence) and what they assume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.90  # of every interval the report shows
SEEDS, RESIDUALS, OPEN, STANDARD_ERRORS = "seeds", "residuals", "open", "standard errors"


def t_quantile(level: float, df: float) -> float:
    from scipy import stats  # here: importing scipy.stats takes ~0.5 s, which `--help` need not wait for

    return float(stats.t.ppf((1 + level) / 2, df))


@dataclass(frozen=True)
class Interval:
    """center +- t(df) * scale (df inf: normal); ``low`` clips it from below (a regret is >= 0).
    ``side`` makes it open: "above" is [bound, inf), "below" (-inf, bound]: an optimum on the grid's
    edge or against a diverged cell, whose true value may lie beyond it."""
    method: str  # SEEDS | RESIDUALS | OPEN | STANDARD_ERRORS
    runs: int  # the seeds it rests on
    center: float
    scale: float = 0.0
    df: float = math.inf
    low: float = -math.inf
    side: str | None = None
    bound: float | None = None

    def bounds(self, level: float = LEVEL) -> tuple[float, float]:
        if self.side == "above":
            return self.bound, math.inf
        if self.side == "below":
            return -math.inf, self.bound
        half = t_quantile(level, self.df) * self.scale if self.scale else 0.0
        return max(self.center - half, self.low), max(self.center + half, self.low)


def t_interval(method: str, center: float, values: list[float], low: float = -math.inf) -> Interval:
    n = len(values)
    return Interval(method, n, center, float(np.std(values, ddof=1)) / math.sqrt(n), n - 1, low)


def open_interval(center: float, side: str, bound: float, runs: int) -> Interval:
    return Interval(OPEN, runs, center, side=side, bound=bound)


def trend_weights(x: np.ndarray) -> np.ndarray:
    """w with slope = w @ y: the least-squares slope's weights."""
    centered = np.asarray(x, float) - np.mean(x)
    return centered / np.sum(centered**2)


def trend(x, y, sd=None, df: float | None = None, runs: int = 1) -> Interval | None:
    """The slope of y against x with its interval. With ``sd`` (each y's standard deviation, known
    up to the estimate with ``df`` degrees of freedom): sqrt(sum w^2 sd^2). Without: the residual
    scatter about the fitted line (df = rows - 2), the single-seed fallback; None below 3 rows."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2:
        return None
    w = trend_weights(x)
    slope = float(w @ y)
    if sd is not None:
        return Interval(SEEDS, runs, slope, float(np.sqrt(np.sum(w**2 * np.asarray(sd) ** 2))), df)
    scatter = residual_sd(x, y)
    if scatter is None:
        return None
    return Interval(RESIDUALS, runs, slope, scatter * float(np.sqrt(np.sum(w**2))), len(x) - 2)


def residual_sd(x, y) -> float | None:
    """The standard deviation of y about its least-squares line in x (len - 2 degrees of freedom)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return None
    slope = float(trend_weights(x) @ y)
    residuals = y - np.mean(y) - slope * (x - np.mean(x))
    return float(np.sqrt(np.sum(residuals**2) / (len(x) - 2)))
