"""The result store: stable keys, atomic records, a cached flat index, schema migration, and many
writers at once."""
import json
import multiprocessing
import os

import pytest

from sweeper.store.schema import SCHEMA_VERSION, SchemaError, cell_key, make_record, migrate
from sweeper.store.index import load_store
from sweeper.store.records import StoreError, read_record, record_path, records_dir, write_record
from trainer.config import TrainConfig, result_fields


def record(width=64, lr=-8.0, status="ok", **kw):
    cfg = TrainConfig(width=width, lr=lr).to_dict()
    metrics = kw.pop("metrics", {"val_loss": 3.0 + lr / 100})
    return make_record(cfg, status, experiment="unit", metrics=metrics,
                       curves={"train": [[1, 5.0], [2, 4.0]], "val": [[2, 4.1]]}, **kw)


def test_key_depends_only_on_result_settings_with_normalised_types():
    base = TrainConfig(width=64).to_dict()
    assert cell_key(base) == cell_key({**base, "lr": int(base["lr"])})
    fp32 = {**base, "precision": "fp32"}
    assert cell_key(fp32) == cell_key({**fp32, "run_dir": "/x", "threads": 7, "device": "cuda"})
    assert cell_key(base) == cell_key({"width": 64})  # defaults filled in
    for name in ("width", "lr", "param", "steps", "seed"):
        changed = {**base, name: "sp" if name == "param" else base[name] + 1}
        assert cell_key(changed) != cell_key(base), name


def test_precision_is_part_of_a_cell_and_auto_is_keyed_as_the_device_resolves_it():
    fp32, bf16, tf32 = (TrainConfig(width=64, precision=p).to_dict() for p in ("fp32", "bf16", "tf32"))
    assert len({cell_key(fp32), cell_key(bf16), cell_key(tf32)}) == 3
    auto = TrainConfig(width=64).to_dict()
    assert cell_key({**auto, "device": "cuda"}) == cell_key(bf16)
    assert cell_key({**auto, "device": "cpu"}) == cell_key(fp32)
    # fp32 is hashed as before precision was a result setting: a record without it keeps its key
    old = make_record(fp32, "ok")
    del old["config"]["precision"]
    assert migrate(old)["config"]["precision"] == "fp32"
    assert cell_key(migrate(old)["config"]) == old["key"] == cell_key(fp32)
    assert make_record(bf16, "ok")["key"] != old["key"]


def test_a_record_round_trips_with_its_curves(tmp_path):
    rec = record(error=None, extra={"note": "first"})
    path = write_record(tmp_path, rec)
    assert path == record_path(tmp_path, rec["key"])
    assert read_record(tmp_path, rec["key"]) == rec
    assert sorted(p.name for p in records_dir(tmp_path).iterdir()) == [f"{rec['key']}.json"]


def test_load_store_gives_one_flat_row_per_record(tmp_path):
    recs = [record(width=w, lr=lr) for w in (32, 64) for lr in (-9.0, -8.0)]
    failed = record(width=128, status="failed", error={"type": "RuntimeError", "message": "boom"},
                    extra={"note": "x"})
    for r in recs + [failed]:
        write_record(tmp_path, r)
    frame = load_store(tmp_path)
    assert len(frame) == 5 and set(frame["key"]) == {r["key"] for r in recs + [failed]}
    for column in ["key", "experiment", "source", "status", "val_loss", "train_loss", "steps_done",
                   "tokens", "wall_time_s", "tokens_per_s", "device", "precision", "error_message",
                   "extra_note", *result_fields()]:
        assert column in frame.columns, column
    row = frame.set_index("key").loc[failed["key"]]
    assert (row["status"], row["width"], row["error_message"], row["extra_note"]) == (
        "failed", 128, "boom", "x")
    assert "curves" not in frame.columns


def test_an_empty_store_has_the_columns_and_a_missing_one_says_so(tmp_path):
    for _ in range(2):  # the second load reads the index of no records that the first wrote
        frame = load_store(tmp_path)
        assert len(frame) == 0 and {"key", "status", "width", "lr"} <= set(frame.columns)
    with pytest.raises(StoreError, match="does not exist"):
        load_store(tmp_path / "nope")


def test_the_index_follows_replaced_added_and_removed_records(tmp_path):
    a, b = record(width=32), record(width=64)
    write_record(tmp_path, a)
    write_record(tmp_path, b)
    assert len(load_store(tmp_path)) == 2
    assert list((tmp_path / ".cache").glob("index-*.parquet"))
    write_record(tmp_path, {**a, "status": "diverged"})  # the same cell, rewritten
    record_path(tmp_path, b["key"]).unlink()
    c = record(width=128)
    write_record(tmp_path, c)
    frame = load_store(tmp_path).set_index("key")
    assert sorted(frame.index) == sorted([a["key"], c["key"]])
    assert frame.loc[a["key"], "status"] == "diverged"


def test_the_cached_index_gives_the_frame_that_parsing_every_record_gives(tmp_path, monkeypatch):
    import shutil

    import pandas as pd

    import sweeper.store.index as store_index

    monkeypatch.setattr(store_index, "_PARALLEL_MIN", 2)  # the forked parse, on a small store
    recs = [record(width=32, extra={"note": "text", "mixed": 1}),
            record(width=64, extra={"mixed": "a string"}),  # no Arrow type fits both records
            record(width=128, status="diverged", metrics={"val_loss": float("nan")}),
            record(width=256, status="failed", error={"type": "OSError", "message": "disk"})]
    for r in recs:
        write_record(tmp_path, r)
    cold = load_store(tmp_path)
    warm = load_store(tmp_path)
    pd.testing.assert_frame_equal(cold, warm)
    assert sorted(map(str, cold["extra_mixed"].dropna())) == ["1", "a string"]
    assert cold.set_index("width").loc[128, "val_loss"] != cold.set_index("width").loc[128, "val_loss"]
    write_record(tmp_path, {**recs[0], "status": "diverged"})
    incremental = load_store(tmp_path)
    shutil.rmtree(tmp_path / ".cache")
    pd.testing.assert_frame_equal(incremental, load_store(tmp_path))
    assert list(incremental["key"]) == sorted(r["key"] for r in recs)


def test_a_torn_index_is_rebuilt(tmp_path):
    write_record(tmp_path, record())
    load_store(tmp_path)
    for index in (tmp_path / ".cache").glob("index-*.parquet"):
        index.write_bytes(b"PAR1 torn")
    assert len(load_store(tmp_path)) == 1


def test_a_newer_schema_fails_clearly(tmp_path):
    future = {**record(), "schema_version": SCHEMA_VERSION + 1}
    path = record_path(tmp_path, future["key"])
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(future))
    assert load_store(tmp_path).empty
    assert [str(path)] == [p for p, _ in load_store(tmp_path).attrs["skipped"]]
    with pytest.raises(StoreError, match=f"v{SCHEMA_VERSION + 1}.*update mutransfer"):
        load_store(tmp_path, strict=True)
    with pytest.raises(SchemaError, match=f"refusing to write a v{SCHEMA_VERSION + 1} record"):
        write_record(tmp_path, future)


V0_RECORD = {  # the flat layout before schema versions (sweeper.store.schema's docstring)
    "config": {"width": 64, "depth": 2, "lr": -9, "param": "sp"},
    "status": "failed", "val_loss": None, "train_loss": 4.2, "steps_done": 7, "tokens": 7168,
    "wall_time_s": 1.5, "tokens_per_s": 4778.0, "device": "cpu", "precision": "fp32", "host": "n1",
    "train_curve": [[1, 5.5], [7, 4.2]], "val_curve": [], "error": "CUDA out of memory",
    "finished_at": "2025-01-01T00:00:00+00:00",
}


def test_a_v0_store_is_read_through_its_migration(tmp_path):
    key = cell_key(V0_RECORD["config"])
    path = record_path(tmp_path, key)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(V0_RECORD))
    migrated = read_record(tmp_path, key)
    assert migrated["schema_version"] == SCHEMA_VERSION and migrated["key"] == key
    assert migrated["metrics"]["steps_done"] == 7
    assert migrated["curves"]["train"] == [[1, 5.5], [7, 4.2]]
    assert migrated["runtime"]["host"] == "n1"
    assert migrated["error"]["message"] == "CUDA out of memory"
    row = load_store(tmp_path).iloc[0]
    assert (row["status"], row["width"], row["lr"], row["error_message"]) == (
        "failed", 64, -9.0, "CUDA out of memory")


def test_a_corrupt_record_is_named(tmp_path):
    write_record(tmp_path, record())
    (records_dir(tmp_path) / "0000000000000000.json").write_text('{"schema_versi')
    with pytest.raises(StoreError, match="0000000000000000.json.*delete it"):
        load_store(tmp_path, strict=True)


def _writer(store, worker, n_cells):
    # 16 workers x 12 cells; cells 0-3 are shared by all workers (requeued duplicates)
    for i in range(n_cells):
        width = 8 * (i + 1) if i < 4 else 1000 * (worker + 1) + i
        write_record(store, record(width=width, extra={"worker": worker}))
        if i % 4 == 0:
            load_store(store)  # readers rebuilding the index race with writers too


def test_sixteen_processes_writing_at_once_lose_nothing(tmp_path):
    workers, n_cells = 16, 12
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(tmp_path, w, n_cells)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * workers
    expected = 4 + workers * (n_cells - 4)
    frame = load_store(tmp_path)
    assert len(frame) == expected == frame["key"].nunique()
    for key in frame["key"]:
        assert read_record(tmp_path, key)["status"] == "ok"
    assert not [n for n in os.listdir(records_dir(tmp_path)) if not n.endswith(".json")]


def test_status_shows_a_size_by_lr_grid_with_missing_cells_and_the_last_errors(tmp_path):
    import io
    import shutil
    from pathlib import Path

    from sweeper.jobs.status import report

    # An experiment of our own, so the expected grid does not follow edits to the shipped presets.
    conf = tmp_path / "conf"
    shutil.copytree(Path(__file__).resolve().parent.parent / "conf", conf)
    (conf / "experiment" / "grid3x3.yaml").write_text(
        "# @package _global_\ndepth: 2\n"
        "hydra:\n  sweeper:\n    params:\n      width: 32,...,128\n      lr: -10:-8\n")
    store = tmp_path / "store"

    def cell(width, lr, status, **kw):
        cfg = TrainConfig(width=width, depth=2, lr=lr).to_dict()
        return make_record(cfg, status, experiment="grid3x3", **kw)

    write_record(store, cell(32, -10, "ok"))
    write_record(store, cell(32, -9, "diverged"))
    write_record(store, cell(64, -8, "failed",
                             error={"type": "MemoryError", "message": "first\nout of memory"}))
    write_record(store, cell(128, -7, "ok"))  # off the experiment's grid: gets its own column
    out = io.StringIO()
    report(store, out, conf_dir=conf)
    text = out.getvalue()
    assert "4 records: 2 ok, 1 diverged, 1 failed" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("    ")]
    assert rows[0] == ["width", "\\", "lr", "-10", "-9", "-8", "-7"]
    grid = {row[0]: row[1:] for row in rows[1:]}
    assert grid == {"32": ["done", "div", ".", "."], "64": [".", ".", "FAIL", "."],
                    "128": [".", ".", ".", "done"]}
    assert "width=64 depth=2 lr=-8 mup/muon_kimi: MemoryError: out of memory" in text
