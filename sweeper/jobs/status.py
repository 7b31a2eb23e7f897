"""``python -m sweeper status --store PATH``: counts by status and, per experiment, a size x lr grid.

A status table is built from sources of cell states merged in order: the cells being trained now
(their claims, Store.live_claims) and those in the scheduler's queue (pending / running, from
Store.queued; a queued retry outranks the failed record it will replace), then the store, then the
cells an experiment's default grid expects, shown as missing. Cells tried more than once are listed
with their attempts, and records that cannot be read are named.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, TextIO

import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser

from sweeper.store import Store
from sweeper.grid.experiments import compose_sweep, has_experiment
from sweeper.grid.expand import expand
from sweeper.store.schema import result_config

# What a grid shows for a cell, by state; earlier states win when records share a position.
SYMBOLS = {"failed": "FAIL", "diverged": "div", "ok": "done", "running": "run", "pending": "wait",
           "missing": "."}
GROUP_AXES = ["param", "optimizer", "layernorm", "seed"]
POSITION = ["experiment", "width", "depth", "lr", *GROUP_AXES]
_STATUS_STATE = {"ok": "ok", "diverged": "diverged", "failed": "failed"}


def store_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Cell states from Store.load's frame: position columns, state, error."""
    cells = frame[POSITION].copy()
    cells["state"] = frame["status"].map(_STATUS_STATE)
    last_line = frame["error_message"].fillna("").map(lambda m: (m.strip().splitlines() or [""])[-1][:200])
    cells["error"] = (frame["error_type"].fillna("") + ": " + last_line).where(frame["status"] == "failed")
    return cells


def expected_cells(experiment: Optional[str], conf_dir: Path,
                   overrides: Optional[list[str]] = None) -> pd.DataFrame:
    """The cells a sweep asked for (``overrides``, Store.asks), else those of the experiment's
    default grid (conf/experiment/NAME.yaml), all 'missing'."""
    cfg = compose_sweep(experiment, conf_dir)
    base = {k: cfg[k] for k in cfg if k != "hydra"}
    if overrides is None:
        overrides = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()]
    parser = OverridesParser.create()
    rows = []
    for cell in expand(overrides, parser):
        values = dict(base)
        for override in cell.overrides:
            parsed = parser.parse_override(override)
            values[parsed.get_key_element()] = parsed.value()
        row = {k: v for k, v in result_config(values).items() if k in POSITION}
        rows.append({**row, "experiment": experiment, "state": "missing", "error": None})
    return pd.DataFrame(rows, columns=[*POSITION, "state", "error"])


def asked_cells(store: Store, frame: pd.DataFrame, conf_dir: Path) -> list[pd.DataFrame]:
    """The cells expected in the store: what its sweeps asked for (Store.asks); for an
    experiment no recorded sweep asked for (a store older than those records), its default grid."""
    asks = store.asks()
    sources = []
    for ask in asks:
        try:
            sources.append(expected_cells(ask["experiment"], conf_dir, ask["overrides"]))
        except Exception:  # noqa: BLE001  an ask the config no longer composes (renamed experiment, edited grid)
            continue
    asked = {ask["experiment"] for ask in asks}
    for name in sorted(set(frame["experiment"].dropna().unique()) - asked):
        if has_experiment(name, conf_dir):
            sources.append(expected_cells(name, conf_dir))
    return sources


def queue_cells(queued: list[dict]) -> pd.DataFrame:
    """Cell states from Store.queued: position columns, state."""
    rows = [{**{k: v for k, v in cell["config"].items() if k in POSITION},
             "experiment": cell["experiment"], "state": cell["state"], "error": None}
            for cell in queued]
    return pd.DataFrame(rows, columns=[*POSITION, "state", "error"])


def claimed_cells(store: Store) -> pd.DataFrame:
    """Cells whose claim is live: running, wherever their job was launched from."""
    return queue_cells([{"config": claim.config, "experiment": claim.experiment, "state": "running"}
                        for claim in store.live_claims().values() if claim.config])


def render_attempts(store: Store, frame: pd.DataFrame, out: TextIO, limit: int = 20) -> None:
    """The cells tried more than once, each attempt with its time and outcome."""
    counts = {k: n for k, n in store.attempt_counts().items() if n > 1}
    if not counts:
        return
    cells = frame[frame["key"].isin(counts)].sort_values("key")
    print(f"\ncells tried more than once ({len(cells)}; the result is the latest ok or diverged "
          f"attempt, a failed one only while there is no other):", file=out)
    for r in cells.head(limit).to_dict("records"):
        print(f"  {r['key']} width={r['width']} depth={r['depth']} lr={r['lr']:g} "
              f"{r['param']}/{r['optimizer']}: result {r['status']}", file=out)
        for attempt in store.attempts(r["key"]):
            error = attempt.get("error") or {}
            why = f" ({error.get('type')}: {str(error.get('message')).splitlines()[0][:120]})" if error else ""
            print(f"    {attempt['timings'].get('finished_at')}  {attempt['status']}{why}", file=out)
    if len(cells) > limit:
        print(f"  ... and {len(cells) - limit} more", file=out)


def merge(sources: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """One state per position: the first source that has the position wins (the queue, then the
    store, then what the experiment expects); within a source, the worst state."""
    frames = []
    for rank, frame in enumerate(sources):
        if len(frame):
            frames.append(frame.assign(_rank=rank, _worst=frame["state"].map(list(SYMBOLS).index)))
    if not frames:
        return pd.DataFrame(columns=[*POSITION, "state", "error"])
    cells = pd.concat(frames, ignore_index=True)
    cells["experiment"] = cells["experiment"].fillna("(none)")
    cells = cells.sort_values(["_rank", "_worst"]).drop_duplicates(POSITION, keep="first")
    return cells.drop(columns=["_rank", "_worst"])


def _row_axis(group: pd.DataFrame) -> str:
    return "depth" if group["width"].nunique() == 1 and group["depth"].nunique() > 1 else "width"


def render_grid(group: pd.DataFrame, out: TextIO) -> None:
    rows = _row_axis(group)
    lrs = sorted(group["lr"].unique())
    table = {(r[rows], r["lr"]): SYMBOLS[r["state"]] for _, r in group.iterrows()}
    header = [f"{rows} \\ lr"] + [f"{lr:g}" for lr in lrs]
    lines = [header] + [[str(size)] + [table.get((size, lr), ".") for lr in lrs]
                        for size in sorted(group[rows].unique())]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("    " + "  ".join(cell.rjust(w) for cell, w in zip(line, widths)), file=out)


def report(store: Path, out: TextIO, conf_dir: Optional[Path] = None,
           queued: Optional[list[dict]] = None, strict: bool = False) -> None:
    """``queued``: the store's cells in the Slurm queue (Store.queued); None when
    there is no queue to ask, which leaves the queue line out. ``strict``: an unreadable record is
    an error (StoreError), not a warning."""
    in_store = Store(store)
    frame = in_store.load(strict)
    counts = frame["status"].value_counts()
    print(f"store {store}: {len(frame)} records: "
          + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "diverged", "failed")), file=out)
    for path, reason in frame.attrs["skipped"]:
        print(f"warning: skipped {path}: {reason}", file=out)
    sources = [claimed_cells(in_store), store_cells(frame)]
    if queued is not None:
        states = [cell["state"] for cell in queued]
        print(f"queue (squeue): {states.count('running')} running, {states.count('pending')} pending",
              file=out)
        sources.insert(1, queue_cells(queued))
    if conf_dir is not None:
        sources += asked_cells(in_store, frame, conf_dir)
    cells = merge(sources)
    print("legend: " + ", ".join(f"{sym}={state}" for state, sym in SYMBOLS.items()), file=out)
    for keys, group in cells.groupby(["experiment", *GROUP_AXES], sort=True, dropna=False):
        fixed = "depth" if _row_axis(group) == "width" else "width"
        for value, sub in group.groupby(fixed):
            settings = " ".join(f"{k}={v}" for k, v in zip(GROUP_AXES, keys[1:]))
            print(f"\nexperiment {keys[0]}: {settings} {fixed}={value}", file=out)
            render_grid(sub, out)
    render_attempts(in_store, frame, out)
    failed = cells[cells["state"] == "failed"]
    if len(failed):
        print("\nfailed cells (last error):", file=out)
        for _, r in failed.iterrows():
            print(f"  {r['experiment']} width={r['width']} depth={r['depth']} lr={r['lr']:g} "
                  f"{r['param']}/{r['optimizer']}: {r['error']}", file=out)
