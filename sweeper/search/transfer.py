"""The transfer-aware search strategy: which (size, log2 lr) cells of one table to run next.

Pure and deterministic: it sees a table's line (sizes, the line's lrs, the parameterization, a
cost per cell) and the outcomes so far, and answers the next cells of one row. The sweep and the
replay (sweeper.search.rounds) call it round after round with different oracles.

What it does, size by size from the cheapest:
- The smallest size starts at the middle of the line with both neighbours (one batch).
- A larger size starts with one cell: the line lr nearest the eta* the smaller sizes predict --
  their least-squares trend in log2 size under SP, the largest smaller size's eta* under muP
  (eta* holds across sizes, with a slow drift that the latest size shows best).
- Where the search is short of compute (below) and that cell is at least as good as the smaller
  size's best cell, nothing says the optimum moved: the row settles on the prediction (``transfer``,
  one cell). Otherwise its second cell is the neighbour below when the cell is worse than the
  smaller size at the same lr (a larger model is better at a fixed lr unless the lr is too high
  for it), else the neighbour on the side the prediction leans to.
- Then one cell at a time toward the better side, until the row's best cell has worse cells (or a
  diverged one) on both sides: bracketed. A row's eta* is then analysis.optima's own fit, so a
  bracketed row and the full grid agree.
- Settled by transfer on two cells: where completing the bracket would take the search past its
  compute budget (``budget``, a fraction of the full grid's compute, counting two cells for every
  larger size still to come), and the parabola with the loss curvature of the nearest smaller
  bracketed size through the two cells has its vertex no more than half a step past the best cell,
  the row settles on its best cell. The grid's own fit lies within half a step of the grid's best
  cell, so a settled row is off by at most half a step wherever the transfer picked the right cell;
  the vertex itself would be finer but trusts the borrowed curvature, which is off where a
  neighbour is near divergence. The largest sizes are where settling saves compute: a cell there
  costs more than all smaller sizes' cells together.
- Told to refine, a bracketed row also gets the half step between its best cell and the better
  neighbour, where that keeps the search within its budget; its eta* is then the fit over its
  cells, half step included. Otherwise the search stays on the line's lrs.
- Diverged cells are worse than any finished one; a failed cell is asked again by the caller.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from analysis.optima import RowOptimum, row_optimum

from sweeper.grid.budget import BUDGET  # also imported from here (sweeper.search.rounds, analysis)

TREND_PARAMS = ("sp",)  # eta* follows a trend in log2 size; under every other (muP) it holds

DIVERGED = math.inf  # an outcome: the cell diverged


@dataclass(frozen=True)
class Line:
    """One table: the sizes (ascending, one row each), the line's lrs (ascending), the cost of one
    cell per size, and whether eta* trends with size (SP) or holds (muP)."""

    axis: str
    sizes: tuple[float, ...]
    lrs: tuple[float, ...]
    costs: tuple[float, ...]
    trend: bool

    @property
    def grid_cost(self) -> float:
        return sum(self.costs) * len(self.lrs)


@dataclass
class RowResult:
    size: float
    eta_star: Optional[float]  # None: no finite loss in the row
    cells: int
    how: str  # "bracketed" | "edge" (best at the line's end) | "transfer" | "diverged"
    curvature: Optional[float] = None  # of the parabola through a bracket, per log2 lr squared


@dataclass
class TableState:
    """What a table's search knows: outcomes per row (lr -> loss, DIVERGED), settled rows."""

    line: Line
    outcomes: list[dict] = field(default_factory=list)
    settled: list[RowResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.outcomes:
            self.outcomes = [{} for _ in self.line.sizes]

    @property
    def row(self) -> Optional[int]:
        """The row being searched; None when every row is settled."""
        return len(self.settled) if len(self.settled) < len(self.line.sizes) else None

    @property
    def spent(self) -> float:
        return sum(len(o) * c for o, c in zip(self.outcomes, self.line.costs))


def _arrays(line: Line, outcomes: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The row on the line's lrs (a refining half step is not on it): NaN where not run."""
    lrs = np.array(line.lrs, float)
    loss = np.array([outcomes.get(lr, math.nan) for lr in line.lrs], float)
    diverged = np.isinf(loss)
    loss[diverged] = math.nan
    return lrs, loss, diverged


def _optimum(line: Line, r: int, outcomes: dict) -> RowOptimum:
    lrs, loss, diverged = _arrays(line, outcomes)
    return row_optimum(line.sizes[r], lrs, loss, diverged)


def _curvature(line: Line, outcomes: dict, best: int) -> Optional[float]:
    """a of y = a (x - m)^2 + c through the best cell and its two run neighbours, when finite."""
    lrs, loss, _ = _arrays(line, outcomes)
    if best == 0 or best == len(lrs) - 1 or not np.isfinite(loss[best - 1: best + 2]).all():
        return None
    (x0, x1, x2), (y0, y1, y2) = lrs[best - 1: best + 2], loss[best - 1: best + 2]
    a = ((y2 - y1) / (x2 - x1) - (y1 - y0) / (x1 - x0)) / (x2 - x0)
    return float(a) if a > 0 else None


def predict(state: TableState) -> Optional[float]:
    """log2 eta* of the row being searched, from the settled smaller rows; None for the first."""
    known = [(math.log2(r.size), r.eta_star) for r in state.settled if r.eta_star is not None]
    if not known:
        return None
    if not state.line.trend or len(known) < 2:
        return known[-1][1]
    x, y = np.array(known).T
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope * math.log2(state.line.sizes[state.row]) + intercept)


def _nearest(lrs: tuple[float, ...], value: float) -> int:
    return int(np.argmin([abs(lr - value) for lr in lrs]))


def _start(state: TableState) -> list[float]:
    lrs = state.line.lrs
    guess = predict(state)
    if guess is None:
        i = len(lrs) // 2
        return [lrs[j] for j in (i - 1, i, i + 1) if 0 <= j < len(lrs)]
    return [lrs[_nearest(lrs, guess)]]


def _second_cell(state: TableState, r: int, lr: float, loss: float) -> float:
    """The neighbour of a row's first cell to run next: below it when the cell is worse than the
    smaller size at that lr (too high an lr for the larger model), else where the prediction leans."""
    lrs, guess = state.line.lrs, predict(state)
    i = lrs.index(lr)
    down = loss > state.outcomes[r - 1].get(lr, math.inf) or (guess is not None and guess < lr)
    return lrs[i - 1] if (down and i > 0) or i == len(lrs) - 1 else lrs[i + 1]


def _prediction_holds(state: TableState, r: int, loss: float) -> bool:
    """Whether a row's one cell, at the prediction, shows no sign that the optimum moved: it is at
    least as good as the smaller size's best cell."""
    below = [v for v in state.outcomes[r - 1].values() if not math.isinf(v)]
    return not math.isinf(loss) and bool(below) and loss <= min(below)


def _transfer_vertex(state: TableState, best: int, neighbour: int, outcomes: dict) -> Optional[float]:
    """The vertex of the parabola with the nearest smaller bracketed row's curvature through the best
    cell and its one run neighbour, when it lies between their midpoint and half a step past the
    best cell (the side not run): there the two cells settle the row. None otherwise."""
    curvature = next((r.curvature for r in reversed(state.settled) if r.curvature), None)
    if curvature is None:
        return None
    lrs = state.line.lrs
    xb, xn = lrs[best], lrs[neighbour]
    yb, yn = outcomes[xb], outcomes[xn]
    if math.isinf(yn):
        return None
    vertex = (xb + xn) / 2 - (yn - yb) / (2 * curvature * (xn - xb))
    past = (vertex - xb) / (xb - xn)  # in steps beyond the best cell, away from the neighbour
    return vertex if -0.5 <= past <= 0.5 else None


def _over_budget(state: TableState, r: int, budget: float) -> bool:
    costs = state.line.costs
    projected = state.spent + costs[r] + 2 * sum(costs[r + 1:])
    return projected > budget * state.line.grid_cost


def step(state: TableState, budget: float = BUDGET, refine: bool = False) -> list[float]:
    """The lrs to run next in the current row, settling rows (into ``state.settled``) until one
    needs cells; [] when the table is done. ``refine``: a bracketed row also gets the half step
    between its best cell and the better neighbour, where the budget allows it."""
    while (r := state.row) is not None:
        outcomes = state.outcomes[r]
        if not outcomes:
            return _start(state)
        wanted = _next_cells(state, r, outcomes, budget, refine)
        if wanted:
            return wanted
    return []


def _half_step(state: TableState, r: int, outcomes: dict, best: int, budget: float) -> Optional[float]:
    """The lr halfway from the best cell to its better finite neighbour, when not yet run and cheap."""
    lrs = state.line.lrs
    if any(lr not in lrs for lr in outcomes) or _over_budget(state, r, budget):
        return None  # refined already, or too dear
    finite = [j for j in (best - 1, best + 1) if 0 <= j < len(lrs) and not math.isinf(outcomes[lrs[j]])]
    if not finite:
        return None
    better = min(finite, key=lambda j: outcomes[lrs[j]])
    return (lrs[best] + lrs[better]) / 2


def _refined_estimate(size: float, outcomes: dict) -> Optional[float]:
    """analysis.optima's fit over the row's run cells, half steps included, as neighbours in order."""
    lrs = np.array(sorted(outcomes), float)
    loss = np.array([outcomes[lr] for lr in sorted(outcomes)], float)
    diverged = np.isinf(loss)
    loss[diverged] = math.nan
    return row_optimum(size, lrs, loss, diverged).estimate


def _next_cells(state: TableState, r: int, outcomes: dict, budget: float, refine: bool) -> list[float]:
    """The row's next lrs; [] after settling the row."""
    line, lrs = state.line, state.line.lrs
    size = line.sizes[r]
    finite = [lr for lr, loss in outcomes.items() if not math.isinf(loss)]
    if not finite:  # all diverged: go lower, below the lowest run
        lower = [lr for lr in lrs if lr < min(outcomes)]
        if lower:
            return [lower[-1]]
        state.settled.append(RowResult(size, None, len(outcomes), "diverged"))
        return []
    if len(outcomes) == 1 and r > 0 and len(lrs) > 1:
        [(lr, loss)] = outcomes.items()
        if _over_budget(state, r, budget) and _prediction_holds(state, r, loss):
            state.settled.append(RowResult(size, predict(state), 1, "transfer"))
            return []
        return [_second_cell(state, r, lr, loss)]
    opt = _optimum(line, r, outcomes)
    best = lrs.index(opt.lr)
    missing = [j for j in (best - 1, best + 1) if 0 <= j < len(lrs) and lrs[j] not in outcomes]
    if not missing:
        if best in (0, len(lrs) - 1):
            state.settled.append(RowResult(size, opt.estimate, len(outcomes), "edge"))
            return []
        half = _half_step(state, r, outcomes, best, budget) if refine else None
        if half is not None:
            return [half]
        estimate = _refined_estimate(size, outcomes) if refine else opt.estimate
        state.settled.append(RowResult(size, estimate, len(outcomes), "bracketed",
                                       _curvature(line, outcomes, best)))
        return []
    if len(missing) == 1 and _over_budget(state, r, budget):
        other = 2 * best - missing[0]
        vertex = _transfer_vertex(state, best, other, outcomes) if 0 <= other < len(lrs) else None
        if vertex is not None:
            state.settled.append(RowResult(size, opt.lr, len(outcomes), "transfer"))
            return []
    return [lrs[missing[0]]]
