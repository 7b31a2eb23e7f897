"""Store -> report directory: tables (Markdown, LaTeX, CSV), optima, verdicts and figures.

Layout of ``out``::

    report.md                 the answer (one line per table: verdict, eta_base to use), how to read
                              the tables, then every table with its notes and verdict (also printed)
    tables.tex                every table, booktabs
    summary.csv               one row per table row: seeds, optimum (grid, fit, interval, edge,
                              open side), regret (and interval), drift (descriptive; drift_low/high
                              empty), trend per doubling (and interval), verdict, the sweep line
                              that would decide an undecided one
    tables/<slug>.{md,tex,csv}
    figures/transfer_<axis>[_<setting>].{png,pdf}: loss against eta_base, SP beside muP
    figures/eta_star_vs_<axis>[_<setting>].{png,pdf}: eta* against size
    figures/coord_check[_<file>].{png,pdf}: h, dh, dlogits over width and depth
    figures/curves_<key>.{png,pdf}

It reads the store only. A folder that holds an earlier report gets this one instead: the files of
that layout are removed first (others are left); a folder that holds other files and no report is
refused unless asked (``force``), so a mistyped --out never mixes a report into unrelated files.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sweeper.store import Store
from trainer.config import CONF_DIR

from . import AnalysisError, figures
from .analysed import Analysed, analyse, decide_commands, load
from .answer import answer_lines, label, title
from .optima import LEVEL, MAX_TREND
from .render import interval_bounds, table_facts, to_frame, to_latex, to_markdown
from .tables import param_name, value_text

COORD_CHECK_GLOB = "coord_check*.json"
COORD_CHECK_COLUMNS = {"param", "optimizer", "width", "depth", "seed", "step", "block", "rms"}
TITLE = "# Learning-rate transfer: "  # report.md's first line: what marks a folder as a report's
OLD_TITLE = "# Report of "  # earlier versions' first line
LAYOUT = ("report.md", "tables.tex", "summary.csv", "tables/*.md", "tables/*.tex", "tables/*.csv",
          *(f"figures/{stem}*.{ext}" for stem in ("transfer_", "eta_star_", "coord_check", "curves_")
            for ext in ("png", "pdf")))


@dataclass
class ReportOptions:
    store: Path
    out: Path
    coord_checks: list[Path] = field(default_factory=list)  # besides coord_check*.json in the store
    curves: list[str] = field(default_factory=list)  # cell keys whose training curves to plot
    figures: bool = True
    workers: int = 1  # processes drawing figures
    max_trend: float = MAX_TREND  # log2 eta* per doubling of size
    strict: bool = False  # an unreadable record stops the report instead of being named and left out
    conf_dir: Path = CONF_DIR  # the sweep's configs, for the sweep line that decides an undecided verdict
    force: bool = False  # write into a folder that holds other files and no report


def summary_frame(analysed: list[Analysed]) -> pd.DataFrame:
    rows = []
    for a in analysed:
        judged, drift_bounds = a.verdict, a.verdict.drift_bounds or (math.nan, math.nan)
        trend_bounds = judged.trend_bounds or (math.nan, math.nan)
        for r, (opt, (low, high)) in enumerate(zip(a.optima, interval_bounds(a.noise))):
            interval = a.noise.eta[r]
            regret_low, regret_high = judged.regret_bounds.get(opt.size, (math.nan, math.nan))
            rows.append({
                "table": a.table.name, **{k: value_text(v) for k, v in a.table.title.items()},
                "axis": a.table.axis, "size": value_text(opt.size), "seeds": a.noise.seeds[r],
                "lr_star_grid": opt.lr, "lr_star_fit": opt.lr_refined, "lr_star_low": low, "lr_star_high": high,
                "lr_star_interval": interval.method if interval else "", "edge": opt.edge or "",
                "best_loss": opt.loss, "regret": judged.regrets.get(opt.size, math.nan), "regret_low": regret_low,
                "regret_high": regret_high, "drift": judged.drift, "drift_low": drift_bounds[0],
                "drift_high": drift_bounds[1], "verdict": judged.outcome or "", "decide": judged.command or "",
                "lr_star_open": opt.open or "", "trend": judged.trend, "trend_low": trend_bounds[0],
                "trend_high": trend_bounds[1], "trend_interval": judged.trend_method, "doublings": judged.doublings,
            })
    return pd.DataFrame(rows)


def write_tables(analysed: list[Analysed], out: Path) -> str:
    """Writes every format; returns the Markdown of all tables."""
    (out / "tables").mkdir(parents=True, exist_ok=True)
    markdown, latex = [], []
    for a in analysed:
        facts = table_facts(a.table, a.optima, a.noise)  # once for both formats
        md = to_markdown(a.table, a.optima, a.verdict, a.noise, facts)
        tex = to_latex(a.table, a.optima, a.verdict, a.noise, facts)
        stem = out / "tables" / a.table.slug
        Path(f"{stem}.md").write_text(md)
        Path(f"{stem}.tex").write_text(tex)
        to_frame(a.table, a.optima, a.verdict, a.noise).to_csv(f"{stem}.csv", index=False)
        markdown.append(md)
        latex.append(tex)
    (out / "tables.tex").write_text("% needs \\usepackage{booktabs}\n" + "\n".join(latex))
    summary_frame(analysed).to_csv(out / "summary.csv", index=False)
    return "\n".join(markdown)


def _file_part(settings: dict) -> str:
    """'_layernorm-false' for {'layernorm': False}: a file name part a person would type."""
    return "".join(f"_{k}-{value_text(v)}".lower() for k, v in settings.items()).replace(" ", "")


def _figure_groups(analysed: list[Analysed], axis: str) -> list[tuple[dict, list[Analysed]]]:
    """The tables of one size axis grouped by every setting but param (SP and muP side by side), each
    group with the settings that tell it from the other groups (its file name's part)."""
    own = [a for a in analysed if a.table.axis == axis]
    groups: dict[tuple, list[Analysed]] = {}
    for a in own:
        groups.setdefault(tuple((k, value_text(v)) for k, v in a.table.title.items() if k != "param"), []).append(a)
    keys = list(groups)
    varying = [k for k, _ in keys[0] if len({dict(key).get(k) for key in keys}) > 1] if keys else []
    out = []
    for key, members in groups.items():
        members.sort(key=lambda a: (a.table.title.get("param") != "sp", str(a.table.title.get("param"))))
        out.append(({k: dict(key)[k] for k in varying if k in dict(key)}, members))
    return out


def _setting_text(a: Analysed) -> str:
    return ", ".join(f"{k}={value_text(v)}" for k, v in a.table.title.items() if k != "param")


def figure_jobs(analysed: list[Analysed], out: Path) -> list[figures.Job]:
    """Per size axis and group of settings: the transfer curves (SP beside muP) and eta* against size."""
    jobs = []
    tables = [a.table for a in analysed]
    for axis in ("width", "depth"):
        for settings, members in _figure_groups(analysed, axis):
            part = _file_part(settings)
            compared = " vs ".join(param_name(a.table.title.get("param", "")) for a in members)
            names = [f"{param_name(a.table.title.get('param', ''))}: {a.verdict.outcome or 'no verdict'}" for a in members]
            jobs.append((figures.transfer, ([a.table for a in members], [a.optima for a in members], names,
                                            f"Validation loss against η_base over {axis}: {compared} "
                                            f"({_setting_text(members[0])})"),
                         out / "figures" / f"transfer_{axis}{part}"))
        swept = [a for a in analysed if a.table.axis == axis and len(a.table.sizes) > 1]
        if swept:
            labels = [f"{label(a.table, tables)}: {a.verdict.outcome or 'no verdict'}" for a in swept]
            compared = " vs ".join(dict.fromkeys(param_name(a.table.title.get("param", "")) for a in sorted(
                swept, key=lambda a: a.table.title.get("param") != "sp")))
            jobs.append((figures.eta_star, (axis, [a.table for a in swept], [a.optima for a in swept],
                                            [interval_bounds(a.noise) for a in swept], labels,
                                            f"Optimal η_base against {axis}: {compared}"),
                         out / "figures" / f"eta_star_vs_{axis}"))
    return jobs


def read_coord_check(path: Path) -> pd.DataFrame:
    try:
        rows = pd.DataFrame(json.loads(path.read_text()))
    except FileNotFoundError:
        raise AnalysisError(f"coordinate-check file {path} does not exist") from None
    except (json.JSONDecodeError, ValueError) as err:
        raise AnalysisError(f"coordinate-check file {path} is not a JSON list of rows: {err}") from None
    missing = COORD_CHECK_COLUMNS - set(rows.columns)
    if rows.empty or missing:
        raise AnalysisError(f"coordinate-check file {path} lacks {sorted(missing) or 'rows'}: "
                            "write it with `python -m trainer.coord_check --out FILE`")
    return rows


def coord_check_jobs(path: Path, out: Path) -> list[figures.Job]:
    """One figure per optimizer: each scale over width and over depth (trainer.coord_check measures a
    cross: every width at the smallest depth, every depth at the smallest width). coord_check.json
    draws coord_check.png; another file name, or several optimizers, add to the name."""
    rows = read_coord_check(path)
    name = path.stem if path.stem.startswith("coord_check") else f"coord_check_{path.stem}"
    jobs = []
    optimizers = rows["optimizer"].unique()
    for optimizer, own in rows.groupby("optimizer"):
        params = " vs ".join(param_name(p) for p in sorted(own["param"].unique(), key=lambda p: (p != "sp", p)))
        stem = name if len(optimizers) == 1 else f"{name}_{optimizer}"
        jobs.append((figures.coord_check, (own, f"Coordinate check: {params} ({optimizer}, {path.name})"),
                     out / "figures" / stem))
    return jobs


def curves_job(store: Path, key: str, out: Path) -> figures.Job:
    try:
        records = Store(store)
        records.check_readable()
        record = records.result(key)
    except ValueError as err:  # the store's StoreError: unknown key, corrupt record
        raise AnalysisError(str(err)) from None
    return figures.training_curves, (record,), out / "figures" / f"curves_{key}"


def holds_report(out: Path) -> bool:
    try:
        with open(out / "report.md", encoding="utf-8") as handle:
            return handle.readline().startswith((TITLE, OLD_TITLE))
    except (OSError, UnicodeDecodeError):
        return False


def clear_out(out: Path, force: bool) -> int:
    """Makes ``out`` ready for a report: removes an earlier report's files (its layout, nothing else);
    raises AnalysisError for a file, or a folder with other files and no report, unless ``force``.
    Returns how many files were removed."""
    if out.exists() and not out.is_dir():
        raise AnalysisError(f"--out {out} is a file: give a folder for the report")
    if not out.is_dir():
        return 0
    if not holds_report(out):
        if any(out.iterdir()) and not force:
            raise AnalysisError(f"--out {out} holds files and no report: give a new or empty folder, or "
                                f"--force to write the report among them")
        return 0
    old = {path for pattern in LAYOUT for path in out.glob(pattern) if path.is_file()}
    for path in old:
        path.unlink()
    return len(old)


def how_to_read(max_trend: float) -> str:
    """Every column and threshold of the tables, defined once (docs/statistics.md has the why)."""
    level = f"{LEVEL:.0%}"
    return f"""## How to read this

- **Rows** are model sizes (width or depth), **columns** log2 η_base (the sweep's `lr=`; η_base =
  2^column). A cell is the final validation loss, mean ± standard deviation over seeds; **bold** is
  the row's best cell; `NaN`: diverged (any seed); blank: not run.
- **eta* grid**: the row's best column. **eta* fit**: the minimum of the parabola through the best
  cell and its two neighbours (the estimate used everywhere). `<= x` / `>= x` marks an *open*
  optimum: on the grid's **edge** (the optimum may lie beyond it) or **stability-bounded** (a
  neighbour diverged, so the stability limit, not a minimum, sets it); an open optimum decides
  nothing, and the notes give the sweep line that closes it.
- **eta* {level}**: the {level} interval of eta* fit, from the spread of per-seed fits (or, with one seed,
  from the scatter of eta* about its trend); open optima get a one-sided interval (`inf`).
- **regret**: how much worse the smallest size's eta* grid is at this size than the row's own fitted
  minimum (loss units; its interval, never below 0 since a regret cannot be, is in summary.csv).
- **Verdict**, from the **trend**: the least-squares slope of eta* against log2(size), in log2 η per
  doubling. `transfers`: its {level} interval lies within ±{max_trend:g} (over 16× in size η* moves at
  most one factor 2) and every row is closed; `does not transfer`: the interval lies beyond ±{max_trend:g},
  or the smallest size's η* diverges at a larger size; `undecided` otherwise, with the sweep line to
  run. **drift** (max − min of eta*) is descriptive only. docs/statistics.md states the noise models.
"""


def answer(store: Path, max_trend: float = MAX_TREND, strict: bool = False, conf_dir: Path = CONF_DIR) -> str:
    """The report's opening: its title and one answer line per table."""
    frame = load(store, strict)
    analysed = decide_commands(analyse(frame, max_trend), frame, store, conf_dir)
    return _opening(analysed, store)


def _opening(analysed: list[Analysed], store: Path) -> str:
    return f"# {title(analysed, store)}\n\n" + "".join(f"- {line}\n" for line in answer_lines(analysed))


def report(options: ReportOptions) -> str:
    """Writes the report into options.out; returns the text to print."""
    frame = load(options.store, options.strict)
    analysed = decide_commands(analyse(frame, options.max_trend), frame, options.store,
                               options.conf_dir)
    jobs = []
    if options.figures:  # read every input before writing anything
        jobs = figure_jobs(analysed, options.out)
        for path in dict.fromkeys([*options.coord_checks, *sorted(options.store.glob(COORD_CHECK_GLOB))]):
            jobs += coord_check_jobs(path, options.out)
        jobs += [curves_job(options.store, key, options.out) for key in options.curves]
    replaced = clear_out(options.out, options.force)
    options.out.mkdir(parents=True, exist_ok=True)
    text = write_tables(analysed, options.out)
    written = figures.render(jobs, options.workers)
    figure_list = "".join(f"- [{p.name}]({p.relative_to(options.out)})\n" for p in written if p.suffix == ".png")
    body = (f"{_opening(analysed, options.store)}\n{how_to_read(options.max_trend)}\n## Tables\n\n"
            f"{len(frame)} records, {len(analysed)} tables.\n\n{text}")
    (options.out / "report.md").write_text(body + (f"\n## Figures\n\n{figure_list}" if figure_list else ""))
    note = f", replacing the earlier report's {replaced} files" if replaced else ""
    return body + f"\nwrote {options.out}/report.md, tables.tex, summary.csv, tables/ ({len(written)} figure files){note}"
