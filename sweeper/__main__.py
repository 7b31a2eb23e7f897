"""python -m sweeper status --store PATH | clean --store PATH | replay --oracle STORE [--json] | plan OVERRIDES [--gpu NAME] [--json]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sweeper.grid.experiments import CONF_DIR


def main(argv: list[str]) -> int:
    if argv[:1] == ["plan"]:  # its overrides are Hydra's, not argparse options of this parser
        from sweeper.grid.plan import main as plan

        return plan(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m sweeper")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser(
        "status", help="counts and a size x lr grid per experiment, with the cells in the Slurm queue")
    status.add_argument("--store", required=True, type=Path, help="the result store directory")
    status.add_argument("--conf", type=Path, default=CONF_DIR,
                        help="config dir whose experiments give the expected grids (default: %(default)s)")
    status.add_argument("--strict", action="store_true",
                        help="an unreadable record is an error (default: named, and the rest shown)")
    clean = commands.add_parser(
        "clean", help="remove what dead jobs left in a store (checkpoints of finished cells, claims of "
                      "dead runs, temp files of interrupted writes) and write the records finished "
                      "attempts lack; each sweep does this when it starts")
    clean.add_argument("--store", required=True, type=Path, help="the result store directory")
    replay = commands.add_parser(
        "replay", help="run the transfer search against a complete grid in a store, answering each "
                       "cell from it: eta* and compute per row and table")
    replay.add_argument("--oracle", required=True, type=Path, metavar="STORE",
                        help="a store holding a complete grid (e.g. one made by `analysis ingest`)")
    replay.add_argument("--json", action="store_true", help="the figures as JSON")
    replay.add_argument("--budget", type=float, default=None,
                        help="the search's compute budget, a fraction of the grid's (default: search_budget's)")
    args = parser.parse_args(argv)
    if args.command == "replay":
        return _replay(args)
    if args.command == "clean":
        return _clean(args)

    from sweeper.store import STORE_ERROR, QueueError, Store, StoreError
    from sweeper.store.schema import SchemaError
    from sweeper.jobs.status import report

    store = Store(args.store)
    try:
        store.check_readable()
    except StoreError as err:
        # a store whose cells are training, or whose finished attempts lack records, still shows
        if not (args.store.is_dir() and (store.live_claims() or store.unrecorded())):
            print(f"error: {err}", file=sys.stderr)
            return STORE_ERROR
    missing = store.unrecorded()
    if missing:
        print(f"note: {len(missing)} cell(s) have a finished attempt but no record yet (e.g. {missing[0]}): "
              f"`python -m sweeper clean --store {args.store}` or the next sweep writes them", flush=True)
    queued = None  # no Slurm here: no queue line
    try:
        queued = store.queued()
    except QueueError as err:
        print(f"note: queue not shown: {err}", file=sys.stderr)
    try:
        report(args.store, sys.stdout, conf_dir=args.conf if args.conf.is_dir() else None,
               queued=queued, strict=args.strict)
    except (StoreError, SchemaError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _clean(args) -> int:
    from sweeper.store import STORE_ERROR, Store, StoreError

    store = Store(args.store)
    try:
        store.check_readable(allow_empty=True)
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return STORE_ERROR
    done = store.clean()
    for line in done.lines or ["nothing to clean"]:
        print(line)
    if done.unwritten:  # those cells show as missing until their record is written
        print(f"error: {done.unwritten_line()}; rerun once the store is writable", file=sys.stderr)
        return 1
    return 0


def _replay(args) -> int:
    from sweeper.store.schema import SchemaError
    from sweeper.search.replay import main as replay
    from sweeper.store import STORE_ERROR, Store, StoreError
    from sweeper.search.rounds import SearchError
    from sweeper.search.transfer import BUDGET

    try:
        Store(args.oracle).check_readable()
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return STORE_ERROR
    try:
        print(replay(args.oracle, args.json, BUDGET if args.budget is None else args.budget))
    except (SearchError, StoreError, SchemaError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from sweeper.jobs.console import run_piped

    sys.exit(run_piped(main, sys.argv[1:]))
