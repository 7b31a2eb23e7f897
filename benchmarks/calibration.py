"""Calibration of the transfer verdict: how often each verdict comes out on synthetic tables whose
trend of eta* is known, with noise at the level measured in the committed stores.

    python benchmarks/calibration.py [--draws 400] [--seed 0] [--stores results/cpu_depth results/cpu_width]

Noise: measured from the stores' tables with several seeds (results/cpu_depth with LayerNorm, 3
seeds): each closed row's cells around its best (best +- 2), each seed's loss less the cell's mean
over the seeds and less the seed's own mean over those cells (a seed that shifts its whole curve
does not move eta*); the pooled standard deviation of what is left is the per-cell noise sigma. The
curvature (loss per (log2 eta)^2 at the optimum) is the median of every closed row's parabola.
Also printed: the measured spread of one seed's eta* (analysis.confidence's pooled one), against
what the synthetic tables give, as a check of the noise model.

Synthetic tables: sizes 2^0 .. 2^(n-1) (n = 4 or 6), true log2 eta* = c - trend * (x - mean x), c
uniform in -7 +- 0.5
(falling with size like SP's), loss = floor + curvature * (lr - eta*)^2 + sigma * N(0, 1) per seed
and cell, on an integer lr grid reaching 3 steps beyond the true optima. Each draw goes through
the report's own code (analysis.tables.line_table, row_optima, TableNoise, verdict).

Targets (docs/statistics.md): trend 0 reads `does not transfer` in <= 10 % of draws and
`transfers` in >= 80 % with 3 seeds; a trend of twice the threshold reads `transfers` in <= 10 %;
the intervals of the trend and of eta* cover the truth at their level (90 %).
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.confidence import TableNoise  # noqa: E402
from analysis.intervals import LEVEL  # noqa: E402
from analysis.optima import MAX_TREND, NO_TRANSFER, TRANSFERS, UNDECIDED, verdict  # noqa: E402
from analysis.tables import build_tables, line_table, row_optima  # noqa: E402
from sweeper.store.index import load_store  # noqa: E402

STORES = (ROOT / "results" / "cpu_depth", ROOT / "results" / "cpu_width")
TRENDS = (0.0, 0.25, 0.5, 1.0)  # log2 eta* per doubling
SIZES = (4, 6)
SEEDS = (1, 3)
OUTCOMES = (TRANSFERS, NO_TRANSFER, UNDECIDED)


@dataclass(frozen=True)
class NoiseLevel:
    sigma: float  # per seed and cell, after a seed's shift of its whole row
    curvature: float  # loss per (log2 eta)^2
    eta_sd: float | None  # the measured spread of one seed's eta* (None: no store with seeds)
    cells: int  # the deviations sigma rests on


def measure_noise(stores=STORES) -> NoiseLevel:
    squares, df, curvatures, eta_squares, eta_df = 0.0, 0, [], 0.0, 0
    for store in stores:
        for table in build_tables(load_store(Path(store))):
            optima = row_optima(table)
            noise = TableNoise(table, optima)
            if noise.sd is not None:
                eta_squares += noise.sd**2 * noise.df
                eta_df += noise.df
            for r in noise.closed:
                curvatures.append(optima[r].curvature)
                if len(table.seeds) < 2:
                    continue
                i = int(np.flatnonzero(table.lrs == optima[r].lr)[0])
                window = table.seed_loss[:, r, max(0, i - 2):i + 3]
                window = window[:, np.isfinite(window).all(axis=0)]
                seeds, cells = window.shape
                if seeds < 2 or cells < 2:
                    continue
                left = window - window.mean(axis=0) - window.mean(axis=1, keepdims=True) + window.mean()
                squares += float(np.sum(left**2))
                df += (seeds - 1) * (cells - 1)
    if not df:
        raise SystemExit(f"no table with several seeds in {', '.join(map(str, stores))}: nothing to measure")
    eta_sd = math.sqrt(eta_squares / eta_df) if eta_df else None
    return NoiseLevel(math.sqrt(squares / df), float(np.median([c for c in curvatures if c is not None])), eta_sd, df)


def synthetic_table(rng: np.random.Generator, trend: float, sizes: int, seeds: int, noise: NoiseLevel,
                    center: float | None = None):
    """(the report's Table of one synthetic width sweep, the true log2 eta* per row). The centre is
    -7 shifted by up to half a grid step at random (None): where eta* sits between grid points
    changes how well a parabola finds it."""
    x = np.arange(sizes, dtype=float)
    center = -7.0 + rng.uniform(-0.5, 0.5) if center is None else center
    truth = center - trend * (x - x.mean())
    lrs = np.arange(math.floor(truth.min()) - 3, math.ceil(truth.max()) + 4, dtype=float)
    size, lr, seed = (a.ravel() for a in np.meshgrid(2.0**x, lrs, np.arange(seeds), indexing="ij"))
    optimum = np.repeat(truth, len(lrs) * seeds)
    loss = 3.0 - 0.1 * np.log2(size) + noise.curvature * (lr - optimum) ** 2 + noise.sigma * rng.standard_normal(len(lr))
    line = pd.DataFrame({"width": size, "depth": 2, "lr": lr, "seed": seed, "loss": loss, "se": np.nan, "ok": True,
                         "diverged": False, "failed": False})
    return line_table(line, "width", {"experiment": "calibration"}), truth


@dataclass
class Result:
    trend: float
    sizes: int
    seeds: int
    draws: int
    outcomes: dict  # verdict -> count
    trend_covered: int  # draws whose trend interval holds the true trend
    trend_intervals: int
    eta_covered: int  # closed rows whose eta* interval holds the truth
    eta_intervals: int
    open_rows: int  # rows with an open optimum
    rows: int

    def rate(self, outcome: str) -> float:
        return self.outcomes.get(outcome, 0) / self.draws


def calibrate(trend: float, sizes: int, seeds: int, draws: int, noise: NoiseLevel, rng: np.random.Generator,
              max_trend: float = MAX_TREND) -> Result:
    result = Result(trend, sizes, seeds, draws, {}, 0, 0, 0, 0, 0, 0)
    for _ in range(draws):
        table, truth = synthetic_table(rng, trend, sizes, seeds, noise)
        optima = row_optima(table)
        noise_model = TableNoise(table, optima)
        judged = verdict(table.axis, table.lrs, table.loss, table.diverged, optima, max_trend, noise_model)
        result.outcomes[judged.outcome] = result.outcomes.get(judged.outcome, 0) + 1
        if judged.trend_bounds is not None and len(noise_model.closed) == sizes:
            low, high = judged.trend_bounds
            result.trend_intervals += 1
            result.trend_covered += low <= -trend <= high
        for opt, interval, eta in zip(optima, noise_model.eta, truth):
            result.rows += 1
            result.open_rows += opt.open is not None
            if interval is not None and opt.open is None:
                low, high = interval.bounds(LEVEL)
                result.eta_intervals += 1
                result.eta_covered += low <= eta <= high
    return result


def run(draws: int, seed: int, noise: NoiseLevel, trends=TRENDS, sizes=SIZES, seeds=SEEDS) -> list[Result]:
    rng = np.random.default_rng(seed)
    return [calibrate(t, n, s, draws, noise, rng) for t, n, s in itertools.product(trends, sizes, seeds)]


def simulated_eta_sd(noise: NoiseLevel, draws: int = 200, seed: int = 0) -> float:
    """One seed's eta* spread on synthetic 3-seed tables at this noise, as TableNoise pools it."""
    rng = np.random.default_rng(seed)
    sds = [TableNoise(table, row_optima(table)).sd
           for table, _ in (synthetic_table(rng, 0.0, 4, 3, noise) for _ in range(draws))]
    return float(np.sqrt(np.mean(np.square([s for s in sds if s is not None]))))


def targets(results: list[Result], max_trend: float = MAX_TREND) -> list[tuple[str, Result, str, float, str, float]]:
    """(name, result, measure, observed, comparison, target) for each target the results bear on."""
    out = []
    for r in results:
        label = f"trend {r.trend:g}, {r.sizes} sizes, {r.seeds} seed{'s' * (r.seeds > 1)}"
        if r.trend == 0:
            out.append((label, r, "does not transfer", r.rate(NO_TRANSFER), "<=", 0.10))
            if r.seeds >= 3:
                out.append((label, r, "transfers", r.rate(TRANSFERS), ">=", 0.80))
        if r.trend >= 2 * max_trend:
            out.append((label, r, "transfers", r.rate(TRANSFERS), "<=", 0.10))
    return out


def coverage_rows(results: list[Result]) -> list[tuple[str, int, float]]:
    out = []
    for r in results:
        if r.trend_intervals:
            out.append(("trend", r.trend_intervals, r.trend_covered / r.trend_intervals))
        if r.eta_intervals:
            out.append(("eta*", r.eta_intervals, r.eta_covered / r.eta_intervals))
    return out


def report(results: list[Result], noise: NoiseLevel, simulated_sd: float) -> str:
    lines = [f"noise measured in the stores: sigma {noise.sigma:.4f} per cell ({noise.cells} df), curvature "
             f"{noise.curvature:.4f} per (log2 eta)^2; one seed's eta* spread {noise.eta_sd:.3f} measured, "
             f"{simulated_sd:.3f} on synthetic tables at this noise", f"threshold +-{MAX_TREND:g} log2 per doubling; "
             f"interval level {LEVEL:.0%}", "",
             "| trend | sizes | seeds | draws | transfers | does not transfer | undecided | trend interval covers | "
             "eta* interval covers | open rows |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        trend_cover = f"{r.trend_covered / r.trend_intervals:.0%} of {r.trend_intervals}" if r.trend_intervals else "-"
        eta_cover = f"{r.eta_covered / r.eta_intervals:.0%} of {r.eta_intervals}" if r.eta_intervals else "-"
        lines.append(f"| {r.trend:g} | {r.sizes} | {r.seeds} | {r.draws} | {r.rate(TRANSFERS):.0%} | "
                     f"{r.rate(NO_TRANSFER):.0%} | {r.rate(UNDECIDED):.0%} | {trend_cover} | {eta_cover} | "
                     f"{r.open_rows / r.rows:.0%} |")
    lines += ["", "targets:"]
    for label, _, measure, observed, comparison, target in targets(results):
        ok = observed <= target if comparison == "<=" else observed >= target
        lines.append(f"  {'ok  ' if ok else 'MISS'} {label}: {measure} {observed:.0%} (target {comparison} {target:.0%})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=400, help="tables per setting (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--stores", type=Path, nargs="+", default=list(STORES), help="where to measure the noise")
    args = parser.parse_args(argv)
    noise = measure_noise(args.stores)
    print(report(run(args.draws, args.seed, noise), noise, simulated_eta_sd(noise)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
