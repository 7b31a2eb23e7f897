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
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_DRIFT_LOG2 = 1.5
MAX_REGRET_FRACTION = 0.01


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


def parabola_vertex(xs: tuple[float, float, float], ys: tuple[float, float, float]) -> float | None:
    """The x of the vertex of the parabola through three points; None when it is not a minimum."""
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
    if a <= 0:
        return None
    return -b / (2 * a)


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
    refined = lr
    if edge is None and finite[i - 1] and finite[i + 1]:
        vertex = parabola_vertex(tuple(lrs[i - 1 : i + 2]), tuple(loss[i - 1 : i + 2]))
        if vertex is not None:
            refined = vertex
    return RowOptimum(float(size), lr, best, float(refined), edge)


@dataclass(frozen=True)
class Verdict:
    transfers: bool | None  # None: fewer than two sizes with an optimum
    drift: float | None  # max - min of the refined log2 eta*
    reference_lr: float | None  # the smallest size's grid eta*
    regrets: dict  # size -> loss at reference_lr minus the row's best (inf: diverged, nan: not run)
    summary: str


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
) -> Verdict:
    """Does the smallest size's eta* serve every size? Rows are ordered by size."""
    rows = [r for r, opt in enumerate(optima) if opt.lr is not None]
    if len(rows) < 2:
        return Verdict(None, None, None, {}, f"n/a: fewer than two {axis}s with a finite loss")
    overall = _judge(axis, lrs, loss, diverged, optima, rows, max_drift, max_regret)
    if overall.transfers is False:
        # Where transfer only holds from some size up (the paper's Table 13: depth >= 32), say so.
        for start in range(1, len(rows) - 1):
            tail = _judge(axis, lrs, loss, diverged, optima, rows[start:], max_drift, max_regret)
            if tail.transfers:
                size = optima[rows[start]].size
                return Verdict(
                    False, overall.drift, overall.reference_lr, overall.regrets,
                    f"{overall.summary}; transfers for {axis} >= {size:g} (eta* drift {tail.drift:.2f})",
                )
    return overall


def _judge(axis, lrs, loss, diverged, optima, rows, max_drift, max_regret) -> Verdict:
    estimates = [optima[r].estimate for r in rows]
    drift = float(max(estimates) - min(estimates))
    reference = optima[rows[0]].lr
    regrets = {
        optima[r].size: _regret(lrs, loss[r], diverged[r], optima[r].loss, reference) for r in rows
    }
    relative = {size: regrets[size] / max(abs(optima[r].loss), 1e-12) for size, r in zip(regrets, rows)}
    worst_size = max(relative, key=lambda s: -math.inf if math.isnan(relative[s]) else relative[s])
    worst = regrets[worst_size]
    unknown = [size for size, value in regrets.items() if math.isnan(value)]
    transfers = bool(drift <= max_drift and relative[worst_size] <= max_regret and not unknown)
    if math.isinf(worst):
        regret_text = f"the smallest {axis}'s eta* (log2 {reference:g}) diverges at {axis} {worst_size:g}"
    else:
        regret_text = f"max regret {worst:.3f} ({100 * relative[worst_size]:.1f}%) at {axis} {worst_size:g}"
    text = f"eta* drift {drift:.2f} (log2), {regret_text}"
    if unknown:
        text += f"; regret unknown at {axis} " + ", ".join(f"{s:g}" for s in unknown) + f" (no run at {reference:g})"
    edges = [optima[r].size for r in rows if optima[r].edge]
    if edges:
        text += f"; edge optimum at {axis} " + ", ".join(f"{s:g}" for s in edges) + " (true drift unknown)"
    return Verdict(transfers, drift, reference, regrets, ("transfers: " if transfers else "does not transfer: ") + text)
