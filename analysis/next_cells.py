"""Which cells to run next: per table row, new log2 eta values from an optuna sampler, as sweep commands.

Each row of the report's tables (same groups, rows and optima, from analysis.report.analyse) becomes
one small optuna study over log2 eta: its finished cells are added as trials, and a TPE sampler
proposes ``per_row`` new values, rounded to ``resolution`` and never a cell the row already ran.

- Range: the row's finished lrs; where the optimum sits on an edge (RowOptimum.edge) it extends one
  grid step (the distance from the best cell to its nearest finished neighbour) past it, so the
  sampler may look beyond.
- Diverged cells are PRUNED trials: TPE ranks pruned trials below every completed one, so the
  region counts as bad without inventing a penalty loss (whose size would be arbitrary).
- TPE, not GPSampler: optuna's GP sampler needs torch, which analysis never imports. Otherwise
  TPE's defaults, but no random start-up trials: the row's cells are the start-up.
- A proposal that rounds onto a cell already run is no proposal: it is told FAIL (TPE ignores
  failed trials) and asked again. A kept one stays RUNNING: TPE's constant liar counts pending
  trials as bad, so the next proposal lands elsewhere.

The command of a row repeats every result setting of its cells that the sweep would not pick by
itself: those differing from the composed sweep config (conf/sweep.yaml plus the records'
experiment, when conf/experiment/ has it), plus the size axes, the group's settings, and the keys the
experiment sweeps by default (command-line values replace them).
"""
from __future__ import annotations

import math
import re
import shlex
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sweeper.record import result_config

from . import AnalysisError
from .optima import RowOptimum
from .tables import LR, SEED, SIZE_AXES, Table, group_columns, value_text

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
RESOLUTION = 0.25  # log2 eta: a quarter of the usual one-per-factor-2 grid step
PER_ROW = 2
SEED_SAMPLER = 0
MIN_FINISHED = 2
_ASKS_PER_VALUE = 100  # TPE's best guess often rounds onto the best cell: ask again (~ms each)


@dataclass
class RowPlan:
    table: str
    title: dict
    axis: str
    size: float
    best_lr: float | None
    best_loss: float | None
    edge: str | None
    finished: list[float]  # lrs of the row's finished (ok or diverged) cells
    search: list[float] | None  # [low, high] of the study's log2 eta
    suggested: list[float]
    argv: list[str] | None  # the sweep command, None when the row needs its grid first
    note: str | None

    @property
    def command(self) -> str | None:
        return None if self.argv is None else shlex.join(self.argv)


@dataclass(frozen=True)
class NextOptions:
    store: Path
    per_row: int = PER_ROW
    experiment: str | None = None
    resolution: float = RESOLUTION
    conf_dir: Path = CONF_DIR


# ---- the sampler --------------------------------------------------------------------------------

def search_range(lrs: np.ndarray, opt: RowOptimum) -> tuple[float, float]:
    """The finished lrs' span, one grid step further on the side where the optimum is on the edge."""
    low, high = float(lrs.min()), float(lrs.max())
    step = float(np.abs(lrs[lrs != opt.lr] - opt.lr).min())
    if opt.edge == "below":
        low = min(low, opt.lr - step)
    elif opt.edge == "above":
        high = max(high, opt.lr + step)
    return low, high


def suggest(lrs: np.ndarray, loss: np.ndarray, diverged: np.ndarray, low: float, high: float,
            count: int, resolution: float) -> list[float]:
    """Up to ``count`` new log2 eta in [low, high] on the ``resolution`` grid, none within half a
    resolution step of a finished cell; ``loss`` is NaN where ``diverged``."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {LR: FloatDistribution(low, high)}
    with warnings.catch_warnings():  # constant_liar is marked experimental in some optuna versions
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=SEED_SAMPLER, n_startup_trials=0, constant_liar=True)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    for lr, value, bad in zip(lrs, loss, diverged):
        params = {LR: float(lr)}
        study.add_trial(create_trial(params=params, distributions=space, state=TrialState.PRUNED) if bad
                        else create_trial(params=params, distributions=space, value=float(value)))
    chosen: list[float] = []
    for _ in range(count * _ASKS_PER_VALUE):
        if len(chosen) == count:
            break
        trial = study.ask(space)
        value = round(round(trial.params[LR] / resolution) * resolution, 10)
        if value in chosen or np.any(np.abs(lrs - value) < resolution / 2):
            study.tell(trial, state=TrialState.FAIL)
        else:
            chosen.append(value)
    return sorted(chosen)


# ---- the command line ---------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z_./][\w./-]*")


def override_value(value) -> str:
    """A setting as Hydra reads it back: true/false, a number, or a string (quoted where needed)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return value_text(value) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in ("true", "false", "null", "nan", "inf"):
        return text
    # Hydra's quoted strings: a backslash is literal unless it precedes a quote or the closing quote
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text) + "'"


def sweep_defaults(experiment: str | None, conf_dir: Path) -> tuple[dict, set[str]]:
    """Result settings a sweep gets without overrides (with ``experiment=``, when given), and the keys
    the experiment's default grid sweeps."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from sweeper.schema import trainer_values  # importing it registers the sweep app's schema

    overrides = [f"experiment={experiment}"] if experiment else []
    try:
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
            cfg = compose("sweep", overrides=overrides, return_hydra_config=True)
    except HydraException as err:
        raise AnalysisError(f"cannot compose the sweep config {' '.join(overrides)} from {conf_dir}: "
                            f"{str(err).splitlines()[0]} Pass the sweep's config dir with --conf.") from None
    swept = set(cfg.hydra.sweeper.params or {})
    return result_config(trainer_values({k: cfg[k] for k in cfg if k != "hydra"})), swept


def known_experiment(experiment, conf_dir: Path) -> str | None:
    """The records' experiment when the sweep has a config of that name (ingested ones have none)."""
    if isinstance(experiment, str) and (conf_dir / "experiment" / f"{experiment}.yaml").is_file():
        return experiment
    return None


def row_records(frame: pd.DataFrame, groups: list[str], table: Table, size: float) -> pd.DataFrame:
    """The finished records behind one table row: its title's values, its size, and the group
    columns its title leaves out being missing there too."""
    mask = (frame[table.axis] == size) & frame["status"].isin(("ok", "diverged"))
    for column, value in table.title.items():
        mask &= frame[column] == value
    for column in groups:
        if column not in table.title:
            mask &= frame[column].isna()
    return frame[mask]


def command(records: pd.DataFrame, table: Table, lrs: list[float], store: Path, conf_dir: Path,
            defaults_of, seeds: list[int] | None = None) -> list[str]:
    """``python sweep.py -m ...`` running ``lrs`` with the rows' settings (and ``seeds`` instead of
    theirs, when given), into ``store``."""
    experiment = known_experiment(records["experiment"].iloc[0], conf_dir)
    defaults, swept = defaults_of(experiment)
    configs = [result_config({k: v for k, v in row.items() if k in defaults and not _missing(v)})
               for row in records.to_dict("records")]
    always = {*SIZE_AXES, *table.title, *swept} - {LR}
    settings = []
    for key in defaults:
        values = seeds if key == SEED and seeds else sorted({c[key] for c in configs})
        if key != LR and (key in always or len(values) > 1 or values[0] != defaults[key]):
            settings.append(f"{key}={','.join(override_value(v) for v in values)}")  # >1: sizes, seeds
    head = ["python", "sweep.py", "-m", f"store={override_value(str(store))}"]
    head += [f"experiment={experiment}"] if experiment else []
    return head + settings + [f"{LR}=" + ",".join(value_text(v) for v in lrs)]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ---- per row ------------------------------------------------------------------------------------

def _native(value):
    return value.item() if isinstance(value, np.generic) else value


def plan_row(table: Table, r: int, opt: RowOptimum, records: pd.DataFrame, options: NextOptions,
             defaults_of) -> RowPlan:
    done = table.runs[r] > 0
    lrs, loss, diverged = table.lrs[done], table.loss[r][done], table.diverged[r][done]
    plan = RowPlan(table.name, {k: _native(v) for k, v in table.title.items()}, table.axis, float(table.sizes[r]),
                   opt.lr, opt.loss, opt.edge, [float(x) for x in lrs], None, [], None, None)
    if len(lrs) < MIN_FINISHED or opt.lr is None:
        plan.note = (f"run the grid first: {len(lrs)} finished cell(s), {int(np.isfinite(loss).sum())} "
                     f"with a finite loss (need {MIN_FINISHED}, one finite)")
        return plan
    low, high = search_range(lrs, opt)
    plan.search = [low, high]
    plan.suggested = suggest(lrs, loss, diverged, low, high, options.per_row, options.resolution)
    if not plan.suggested:
        plan.note = f"no new value at resolution {options.resolution:g} in [{low:g}, {high:g}]"
        return plan
    plan.argv = command(records, table, plan.suggested, options.store, options.conf_dir, defaults_of)
    if set(records["source"]) == {"ingest"}:
        plan.note = ("ingested numbers carry no training setup: the new cells train with the settings "
                     "shown (add e.g. preset=paper) and form their own table")
    return plan


def plan_next(options: NextOptions) -> list[RowPlan]:
    if options.per_row < 1:
        raise AnalysisError(f"--per-row {options.per_row}: ask for at least 1 new value per row")
    if not options.resolution > 0:
        raise AnalysisError(f"--resolution {options.resolution}: must be a positive step in log2 eta")
    from .report import analyse, load  # here: report loads matplotlib, which `--help` and ingest need not

    if not (options.conf_dir / "sweep.yaml").is_file():
        raise AnalysisError(f"{options.conf_dir} holds no sweep.yaml: pass the sweep's config dir with --conf")
    frame = load(options.store)
    if options.experiment is not None:
        named = sorted(str(e) for e in frame["experiment"].dropna().unique())
        frame = frame[frame["experiment"] == options.experiment]
        if frame.empty:
            raise AnalysisError(f"no records of experiment '{options.experiment}' in {options.store}; "
                                f"its experiments: {', '.join(named) or '(none named)'}")
    groups = group_columns(frame[frame[LR].notna()])  # as build_tables groups them
    cache: dict = {}

    def defaults_of(experiment):
        if experiment not in cache:
            cache[experiment] = sweep_defaults(experiment, options.conf_dir)
        return cache[experiment]

    plans = []
    for analysed in analyse(frame):
        table = analysed.table
        for r, opt in enumerate(analysed.optima):
            records = row_records(frame, groups, table, table.sizes[r])
            plans.append(plan_row(table, r, opt, records, options, defaults_of))
    return plans


# ---- output -------------------------------------------------------------------------------------

def to_text(plans: list[RowPlan], options: NextOptions) -> str:
    """Per table, a comment line per row and its command: the output runs as a shell script."""
    lines = [f"# next cells: {options.per_row} per row from optuna's TPE over log2 eta (resolution "
             f"{options.resolution:g}); diverged cells count as worse than any finished one"]
    table = note = None
    for plan in plans:
        if plan.table != table:
            table, note = plan.table, None
            lines += ["", f"## {table}"]
        size = f"{plan.axis} {value_text(plan.size)}"
        if plan.search is None:
            lines.append(f"# {size}: {plan.note}")
            continue
        edge = f", edge: may lie {plan.edge}" if plan.edge else ""
        lines.append(f"# {size}: best {value_text(plan.best_lr)} (loss {plan.best_loss:.3f}{edge}); "
                     f"searched [{plan.search[0]:g}, {plan.search[1]:g}]")
        if plan.note and plan.note != note:  # a table's rows often share it: say it once
            lines.append(f"# {plan.note}")
        note = plan.note
        if plan.command:
            lines.append(plan.command)
    return "\n".join(lines)


def to_json(plans: list[RowPlan]) -> list[dict]:
    return [{**asdict(plan), "command": plan.command} for plan in plans]
