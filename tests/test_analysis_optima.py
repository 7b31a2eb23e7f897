"""Optima of one row (argmin, parabola refinement, edges) and the transfer verdict of a table."""
from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.optima import parabola_vertex, row_optimum, verdict

LRS = np.array([-10.0, -9.0, -8.0, -7.0, -6.0])
NONE = np.zeros(5, bool)


def bowl(center: float, scale: float = 0.1, floor: float = 3.0, lrs: np.ndarray = LRS) -> np.ndarray:
    return floor + scale * (lrs - center) ** 2


def test_parabola_vertex_is_exact_on_a_parabola_even_on_an_uneven_grid():
    xs = (-9.0, -8.5, -7.0)
    ys = tuple(2.0 + 0.3 * (x + 7.8) ** 2 for x in xs)
    assert parabola_vertex(xs, ys) == pytest.approx(-7.8)
    assert parabola_vertex((-1.0, 0.0, 1.0), (1.0, 2.0, 1.0)) is None  # a maximum is no optimum


def test_row_optimum_refines_between_grid_points():
    opt = row_optimum(256, LRS, bowl(-7.7), NONE)
    assert opt.lr == -8.0 and opt.edge is None
    assert opt.lr_refined == pytest.approx(-7.7)
    assert opt.loss == pytest.approx(bowl(-7.7)[2])


@pytest.mark.parametrize("center, edge, lr", [(-11.0, "below", -10.0), (-5.0, "above", -6.0)])
def test_optimum_on_the_grid_edge_is_flagged(center, edge, lr):
    opt = row_optimum(256, LRS, bowl(center), NONE)
    assert (opt.lr, opt.edge, opt.lr_refined) == (lr, edge, lr)
    assert opt.edge_note() == f"edge: the optimum may lie {edge} {lr:g}"


def test_missing_neighbour_is_an_edge_but_a_diverged_one_bounds_the_optimum():
    loss = bowl(-6.8)
    loss[4] = np.nan  # never run: the optimum may lie above -7
    assert row_optimum(256, LRS, loss, NONE).edge == "above"
    diverged = NONE.copy()
    diverged[4] = True  # exploded: the optimum is below -6, but no parabola through it
    opt = row_optimum(256, LRS, loss, diverged)
    assert (opt.lr, opt.edge, opt.lr_refined) == (-7.0, None, -7.0)


def test_row_without_finite_loss_has_no_optimum():
    opt = row_optimum(64, LRS, np.full(5, np.nan), np.ones(5, bool))
    assert opt.lr is None and opt.estimate is None


def _verdict(rows: list[np.ndarray], diverged=None, lrs: np.ndarray = LRS, **kwargs):
    loss = np.array(rows)
    diverged = np.zeros(loss.shape, bool) if diverged is None else diverged
    optima = [row_optimum(2.0 ** (7 + i), lrs, loss[i], diverged[i]) for i in range(len(rows))]
    return verdict("width", lrs, loss, diverged, optima, **kwargs)


def test_stable_optimum_transfers_and_drifting_one_does_not():
    good = _verdict([bowl(-7.6), bowl(-7.5), bowl(-7.4, floor=2.5)])  # -7.5: a tie of -8 and -7
    assert good.outcome == "transfers" and good.drift == pytest.approx(0.2)
    assert good.trend == pytest.approx(0.1) and good.doublings == 2
    assert good.summary.startswith("transfers: eta* trend +0.10 log2 per doubling of width (90% interval 0.10 to 0.10")
    # The regret of width 128's grid eta* (-8) on each row's fitted parabola: 0.1 * (-8 - eta*)^2,
    # not zero where -8 is the row's own best cell.
    assert good.regrets == pytest.approx({128.0: 0.016, 256.0: 0.025, 512.0: 0.036})

    bad = _verdict([bowl(-6.6), bowl(-7.6), bowl(-8.6)])
    assert bad.outcome == "does not transfer" and bad.drift == pytest.approx(2.0)
    # Width 128's eta* (-7) is two cells from width 512's best (-9): that cell above the fitted minimum.
    assert bad.regrets[512.0] == pytest.approx(0.1 * 1.6**2)
    assert bad.summary.startswith("does not transfer: eta* trend -1.00 log2 per doubling")


def test_the_threshold_is_on_the_trend_per_doubling():
    rows = [bowl(-7.0), bowl(-7.5), bowl(-8.0)]  # -0.5 log2 per doubling, exactly (no noise)
    assert _verdict(rows, max_trend=0.4).outcome == "does not transfer"
    assert _verdict(rows, max_trend=0.6).outcome == "transfers"
    # Two rows and no seeds: no noise estimate, so no verdict either way.
    assert _verdict(rows[:2], max_trend=0.6).outcome == "undecided"


def test_reference_lr_that_diverges_at_a_larger_size_is_infinite_regret():
    rows = [bowl(-7.0), bowl(-8.0)]
    diverged = np.zeros((2, 5), bool)
    diverged[1, 3] = True
    rows[1][3] = np.nan
    result = _verdict(rows, diverged)
    assert math.isinf(result.regrets[256.0]) and result.outcome == "does not transfer"
    assert "(log2 -7) diverges at width 256" in result.summary


def test_transfer_from_some_size_up_is_reported():
    # Like the paper's Table 13: the small sizes want another LR, the large ones agree.
    lrs = np.arange(-12.0, -4.0)
    result = _verdict([bowl(c, lrs=lrs) for c in (-9.6, -9.0, -8.4, -7.0, -7.05, -7.1)], lrs=lrs)
    assert result.outcome == "does not transfer"
    assert "transfers for width >= 1024 (eta* trend -0.05" in result.summary


def test_open_optima_never_decide_and_the_verdict_says_which_cells_close_them():
    top = _verdict([bowl(-5.0 - 0.01 * i) for i in range(4)])  # every row best at the grid's top (-6)
    assert top.trend is None  # no closed row: no trend at all
    assert top.outcome == "undecided" and top.decide.lrs == [-5.0, -4.0] and top.decide.sizes == [128, 256, 512, 1024]
    assert "close the open optima: run log2 eta -5, -4 at widths 128, 256, 512 and 1024" in top.summary
    # Against a diverged neighbour (the stability limit): half a step towards it closes the row.
    rows = [bowl(-7.0), bowl(-7.1), bowl(-7.2), bowl(-7.3)]
    diverged = np.zeros((4, 5), bool)
    diverged[3, 4] = True
    rows[3][4] = np.nan
    bounded = _verdict(rows, diverged)
    assert bounded.outcome == "undecided" and bounded.trend == pytest.approx(-0.1)  # the closed rows': no say
    assert bounded.close.lrs == [-6.5] and bounded.close.sizes == [1024]


def test_single_size_has_no_verdict():
    assert _verdict([bowl(-7.0)]).outcome is None


def test_a_regret_never_run_is_undecided_and_says_which_cell_decides():
    rows = [bowl(-7.0), bowl(-9.0)]
    rows[1][3] = np.nan  # width 256 never ran width 128's eta* (-7); its own optimum is bracketed
    result = _verdict(rows)
    assert result.outcome == "undecided" and result.decide.lr == -7.0 and result.decide.sizes == [256.0]
    assert "to decide: run log2 eta -7 at width 256" in result.summary


def test_an_unfinished_row_is_named_incomplete_and_the_rest_judged():
    # A sweep stopped halfway through width 512: -10 .. -8 ran, its best (-8) has -7 unrun beside it.
    half = bowl(-7.0)
    half[3:] = np.nan
    stopped = _verdict([bowl(-7.0), bowl(-7.1), bowl(-7.2), half])
    assert stopped.outcome == "transfers" and set(stopped.regrets) == {128.0, 256.0, 512.0}
    assert stopped.summary.endswith("; incomplete (3 of 5 cells) at width 1024")
    # Cells missing away from a bracketed optimum, or beyond the line's end, leave a row judged.
    far = bowl(-7.0)
    far[0] = np.nan
    assert "incomplete" not in _verdict([bowl(-7.0), far]).summary
    both = _verdict([bowl(-7.0), half])
    assert both.outcome is None and both.summary == (
        "n/a: fewer than two finished widths with a finite loss; incomplete (3 of 5 cells) at width 256")


def test_a_column_another_row_added_leaves_this_rows_bracket_and_fit_as_they_were():
    # results/cpu_depth: the half step -3.5 ran at depth 4 only, to close that row; at the other
    # depths the best cell -4 keeps -3 as its upper neighbour (it used to read "edge", the verdict n/a).
    lrs = np.array([-6.0, -5.0, -4.0, -3.5, -3.0])
    full = bowl(-4.2, lrs=lrs)
    gap = full.copy()
    gap[3] = np.nan
    opt = row_optimum(2, lrs, gap, np.zeros(5, bool))
    assert opt.edge is None and opt.lr == -4.0
    without = row_optimum(2, np.delete(lrs, 3), np.delete(gap, 3), np.zeros(4, bool))
    assert (opt.lr_refined, opt.curvature) == (without.lr_refined, without.curvature)
    assert opt.lr_refined == pytest.approx(-4.2)
    judged = verdict("depth", lrs, np.array([gap, full, gap]), np.zeros((3, 5), bool),
                     [row_optimum(d, lrs, row, np.zeros(5, bool)) for d, row in zip((2, 4, 8), (gap, full, gap))])
    assert judged.outcome == "transfers" and "incomplete" not in judged.summary
