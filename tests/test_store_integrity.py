"""Store integrity: old stores stay complete, finished results are never lost, one trainer per cell,
no input breaks a store, and nothing printed or built from a store escapes it."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sweeper.store.schema as record_module
import trainer.config as config_module
from analysis.ingest import IngestError, ingest
from sweeper.store.claims import claim_path, read_claim, try_claim
from sweeper.store.leftovers import KEEP
from sweeper.store.schema import SCHEMA_VERSION, cell_key, make_record, migrate, origin_of
from sweeper.store.index import load_store
from sweeper.store.records import StoreError, attempts, read_record, record_path, records_dir, run_dir, write_record
from trainer.config import CHECKPOINT, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "store_v1"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# One tiny cell: about a second on one core.
TINY = ["experiment=smoke", "width=32", "steps=4"]


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def sweep(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return run([str(ROOT / "sweep.py"), "-m", *args], cwd, timeout)


def trained_keys(stdout: str) -> list[str]:
    """Keys of the cells a sweep trained: each job prints 'cell <key> width=...' when it ends."""
    return [line.split()[1] for line in stdout.splitlines()
            if line.startswith("cell ") and " width=" in line]


def attempt_files(store: Path) -> dict[str, int]:
    return {d.name: len(list(d.glob("*.json"))) for d in (store / "attempts").iterdir()}


def fixture_copy(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(FIXTURE / "records", store / "records")
    return store


# ---- keys that survive a release ----------------------------------------------------------------

def test_a_v1_store_is_complete_its_sweep_trains_nothing_and_the_report_reads_every_record(tmp_path):
    store = fixture_copy(tmp_path)
    args = (FIXTURE / "sweep_args.txt").read_text().split()
    again = sweep([*args, f"store={store}"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipping 4 of 4 cells already in the store" in again.stdout
    assert trained_keys(again.stdout) == []

    frame = load_store(store, strict=True)
    assert len(frame) == 7 and frame.attrs["skipped"] == []
    assert sorted(frame["key"]) == sorted(p.stem for p in (FIXTURE / "records").glob("*.json"))
    report = run(["-m", "analysis", "report", "--store", str(store), "--out", str(tmp_path / "r"),
                  "--no-figures", "--strict"], tmp_path)
    assert report.returncode == 0, report.stderr
    assert "7 records" in report.stdout


def test_ingested_v1_records_no_longer_claim_settings_their_csv_never_gave(tmp_path):
    frame = load_store(fixture_copy(tmp_path)).set_index("key")
    ingested = frame[frame["source"] == "ingest"]
    assert len(ingested) == 3
    assert ingested["steps"].isna().all() and ingested["dataset"].isna().all()  # v1 said 200, embedded
    assert set(ingested["width"]) == {256, 512}
    trained = frame[frame["source"] == "trainer"]
    assert set(trained["steps"]) == {12} and set(trained["dataset"]) == {"embedded"}


def test_a_setting_added_later_changes_no_key_and_old_records_read_it_as_its_default(tmp_path, monkeypatch):
    records = [json.loads(p.read_text()) for p in sorted((FIXTURE / "records").glob("*.json"))]
    keys = [r["key"] for r in records]
    # The next release's TrainConfig: one more result setting, at a default that keeps old results.
    newer = dataclasses.make_dataclass("TrainConfig", [("micro_batch_size", int, dataclasses.field(default=0))],
                                       bases=(TrainConfig,))
    monkeypatch.setattr(record_module, "TrainConfig", newer)
    monkeypatch.setattr(config_module, "TrainConfig", newer)
    assert "micro_batch_size" in config_module.result_fields()

    for record, key in zip(records, keys):
        read = migrate(record)
        assert read["schema_version"] == SCHEMA_VERSION
        assert cell_key(read["config"], origin_of(read["source"], read["experiment"])) == key
        expected = None if read["source"] == "ingest" else 0  # ingested: unknown, never invented
        assert read["config"]["micro_batch_size"] == expected
    trained = migrate(records[0])["config"]
    assert cell_key({**trained, "micro_batch_size": 4}) != keys[0]  # a non-default value is a new cell


def test_every_committed_store_is_keyed_as_a_cpu_sweep_plans_its_cells_now():
    # precision became a result setting: a CPU sweep plans auto as fp32, which stays out of keys, so
    # results/ and the v1 fixture (all fp32) keep every key: nothing retrains
    from sweeper.grid.cells import resolved_config

    paths = sorted((ROOT / "results").glob("*/records/*.json")) + sorted((FIXTURE / "records").glob("*.json"))
    trained = [(p, json.loads(p.read_text())) for p in paths]
    trained = [(p, r) for p, r in trained if r.get("source", "trainer") == "trainer"]
    assert len(trained) > 280
    for path, record in trained:
        config = {k: v for k, v in record["config"].items() if k != "precision"}
        planned = resolved_config(TrainConfig.from_mapping({**config, "device": "cpu"}), None)
        assert planned.precision == "fp32" == migrate(record)["config"]["precision"]
        assert cell_key(planned.to_dict()) == record["key"] == path.stem, path


# ---- never lose a finished result ---------------------------------------------------------------

def test_a_failed_attempt_never_hides_a_finished_result_and_attempts_are_kept(tmp_path):
    config = {"width": 32, "depth": 2, "lr": -8.0}
    write_record(tmp_path, make_record(config, "ok", metrics={"val_loss": 3.0}))
    key = cell_key(config)
    write_record(tmp_path, make_record(config, "failed", error={"type": "OSError", "message": "disk"}))
    assert read_record(tmp_path, key)["status"] == "ok"
    assert [a["status"] for a in attempts(tmp_path, key)] == ["ok", "failed"]
    write_record(tmp_path, make_record(config, "diverged"))  # a finished rerun is the new result
    assert read_record(tmp_path, key)["status"] == "diverged"
    assert len(attempts(tmp_path, key)) == 3


def test_a_force_rerun_that_fails_keeps_the_ok_record_and_status_shows_both_attempts(tmp_path):
    store = tmp_path / "store"
    first = sweep([*TINY, "lr=-8", f"store={store}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (key,) = trained_keys(first.stdout)
    # device is a runtime setting (at the precision the first run resolved): the same cell, and on
    # this CUDA-less machine the run fails.
    rerun = sweep([*TINY, "lr=-8", "force=true", "device=cuda", "precision=fp32", f"store={store}"], tmp_path)
    assert rerun.returncode != 0 and "1 of 1 cells failed" in rerun.stderr
    assert "keeps its earlier ok result" in rerun.stdout
    assert read_record(store, key)["status"] == "ok"
    assert [a["status"] for a in attempts(store, key)] == ["ok", "failed"]
    status = run(["-m", "sweeper", "status", "--store", str(store)], tmp_path)
    assert status.returncode == 0, status.stderr
    assert f"{key} width=32" in status.stdout and "result ok" in status.stdout
    assert "  ok" in status.stdout and "failed (ValueError: device='cuda'" in status.stdout


def test_ingested_settings_come_from_columns_then_the_experiment_else_are_unknown(tmp_path):
    csv = tmp_path / "runs.csv"
    csv.write_text("width,depth,lr,param,optimizer,layernorm,val_loss,steps,batch_size\n"
                   "64,4,-8,mup,adamw,true,3.2,1221,\n")
    store = tmp_path / "store"
    (given,) = ingest(csv, store)
    assert given["config"]["steps"] == 1221 and given["config"]["batch_size"] is None
    assert given["config"]["dataset"] is None and given["config"]["seed"] is None
    (composed,) = ingest(csv, store, experiment="smoke")
    assert composed["config"]["steps"] == 1221  # the column wins
    assert composed["config"]["batch_size"] == 8 and composed["config"]["seq_len"] == 64  # smoke's
    assert composed["key"] != given["key"]


# ---- one trainer per cell -----------------------------------------------------------------------

def test_two_overlapping_sweeps_train_each_shared_cell_once(tmp_path):
    store = tmp_path / "store"
    first = ["width=32,64", "lr=-9,-8"]
    second = ["width=64", "lr=-9,-8,-7"]  # starts with the cells the first sweep runs last
    procs = [subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "-m", "experiment=smoke",
                               "steps=30", *grid, f"store={store}"], cwd=tmp_path, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for grid in (first, second)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    trained = trained_keys(outputs[0][0]) + trained_keys(outputs[1][0])
    assert len(trained) == len(set(trained)) == 5
    assert attempt_files(store) == {key: 1 for key in trained}
    assert set(load_store(store)["status"]) == {"ok"}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_claim_is_refused_while_its_owner_lives_and_taken_over_when_it_is_dead_or_silent(tmp_path):
    key = "0123456789abcdef"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = claim_path(tmp_path, key)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid, "token": "a"}))
        held, owner = try_claim(tmp_path, key)
        assert held is None and owner.pid == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "token": "b"}))
    held, owner = try_claim(tmp_path, key)
    assert owner is None and read_claim(tmp_path, key).pid == os.getpid()
    held.release()
    assert not path.exists()
    # Another node's claim: its process cannot be asked, its heartbeat can.
    path.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "token": "c"}))
    assert try_claim(tmp_path, key)[0] is None
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    held, owner = try_claim(tmp_path, key)
    assert owner is None
    held.release()


def test_a_killed_submitit_local_sweep_leaves_its_running_cells_to_their_jobs(tmp_path):
    store = tmp_path / "store"
    args = [str(ROOT / "sweep.py"), "-m", "experiment=smoke", "width=32", "lr=-9,-8", "steps=500",
            "hydra/launcher=submitit_local", f"store={store}"]
    sweep_proc = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    claims = store / "claims"
    end = time.monotonic() + 120
    while len(list(claims.glob("*.json")) if claims.is_dir() else []) < 2:
        assert time.monotonic() < end, "the jobs never claimed their cells"
        time.sleep(0.2)
    sweep_proc.send_signal(signal.SIGKILL)
    sweep_proc.wait()
    keys = sorted(p.stem for p in claims.glob("*.json"))
    rerun = run(args[:-2] + [f"store={store}"], tmp_path, timeout=600)  # the basic launcher
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "leaving 2 cells to the runs training them now" in rerun.stdout
    assert trained_keys(rerun.stdout) == []
    end = time.monotonic() + 300
    while any(not record_path(store, key).exists() for key in keys):  # the orphaned jobs finish
        assert time.monotonic() < end, "the killed sweep's jobs did not record their cells"
        time.sleep(0.5)
    assert attempt_files(store) == {key: 1 for key in keys}


def test_a_checkpoint_refuses_a_run_with_other_settings(tmp_path):
    common = ["-m", "trainer.train", "dataset=embedded", "width=32", "depth=2", "batch_size=4",
              "seq_len=32", "steps=4", "warmup_steps=1", "checkpoint_interval=2", f"run_dir={tmp_path / 'd'}"]
    first = run([*common, "lr=-8"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (tmp_path / "d" / CHECKPOINT).exists()
    other = run([*common, "lr=-3"], tmp_path)
    assert other.returncode == 2
    assert "belongs to another run (lr=-8.0 there, -3.0 here)" in other.stderr
    assert "Traceback" not in other.stderr


def test_clean_removes_what_killed_jobs_left_and_keeps_what_is_live_or_kept(tmp_path):
    store = tmp_path / "store"
    done = [{"width": w, "depth": 2, "lr": -8.0} for w in (32, 64)]
    for config in done:
        write_record(store, make_record(config, "ok", metrics={"val_loss": 3.0}))
    leftover, kept = (run_dir(store, cell_key(c)) for c in done)
    for folder in (leftover, kept):
        folder.mkdir(parents=True)
        (folder / CHECKPOINT).write_bytes(b"x" * 1000)
    (kept / KEEP).touch()
    old_tmp = records_dir(store) / ".abc.json.123.deadbeef.tmp"
    young_tmp = leftover / "checkpoint.tmp999"
    for tmp in (old_tmp, young_tmp):
        tmp.write_bytes(b"partial")
    os.utime(old_tmp, (time.time() - 3600, time.time() - 3600))
    dead = claim_path(store, cell_key(done[0]))
    dead.parent.mkdir(parents=True)
    dead.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "token": "t"}))

    cleaned = run(["-m", "sweeper", "clean", "--store", str(store)], tmp_path)
    assert cleaned.returncode == 0, cleaned.stderr
    assert not (leftover / CHECKPOINT).exists() and (kept / CHECKPOINT).exists()
    assert not old_tmp.exists() and young_tmp.exists() and not dead.exists()
    assert "removed 1 leftover checkpoint(s)" in cleaned.stdout


# ---- no input can break a store -----------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("width=1180591620717411303424", "width=1180591620717411303424 is outside its range: 1 to 1048576"),
    ("lr=NaN", "lr=nan must be a finite number"),
    ("lr=1e300", "lr=1e+300 is outside its range"),
    ("head_dim=0", "head_dim=0 is outside its range"),
    ("warmup_steps=50", "warmup_steps=50 exceeds steps=4"),
    ("divergence_factor=inf", "divergence_factor=inf must be a finite number"),
])
def test_absurd_settings_stop_the_sweep_before_anything_is_written(tmp_path, override, message):
    result = sweep([*TINY, "lr=-8", override, "store=s"], tmp_path)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s" / "records").exists()


def test_ingest_rejects_absurd_rows_binary_files_and_unsafe_names_and_reads_a_bom(tmp_path):
    header = "width,depth,lr,param,optimizer,layernorm,val_loss\n"
    bad = tmp_path / "bad.csv"
    bad.write_text(header + "1180591620717411303424,4,-8,mup,adamw,true,3\n64,4,1e300,mup,adamw,true,3\n")
    with pytest.raises(IngestError) as err:
        ingest(bad, tmp_path / "store")
    assert "line 2: width=1180591620717411303424 is outside its range" in str(err.value)
    assert "line 3: lr=1e+300 is outside its range" in str(err.value)
    binary = tmp_path / "table.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    with pytest.raises(IngestError, match="is not a UTF-8 text CSV"):
        ingest(binary, tmp_path / "store")
    good = tmp_path / "good.csv"
    good.write_bytes(b"\xef\xbb\xbf" + (header + "64,4,-8,mup,adamw,true,3\n").encode())
    with pytest.raises(IngestError, match="may only use letters"):
        ingest(good, tmp_path / "store", experiment="x\ntouch PWNED")
    (record,) = ingest(good, tmp_path / "store")
    assert record["config"]["width"] == 64 and len(load_store(tmp_path / "store")) == 1


def _break(store: Path) -> dict[str, str]:
    """Writes a corrupt, an empty and an out-of-range record next to good ones; name -> why."""
    good = make_record({"width": 32, "depth": 2, "lr": -8.0}, "ok", metrics={"val_loss": 3.0})
    huge = json.loads(json.dumps(good))
    huge["config"]["width"] = 1180591620717411303424
    huge["key"] = cell_key({**good["config"], "width": 64})  # what an old version wrote under it
    files = {"aaaaaaaaaaaaaaaa.json": '{"schema_versi', "bbbbbbbbbbbbbbbb.json": "",
             f"{huge['key']}.json": json.dumps(huge)}
    for name, text in files.items():
        (records_dir(store) / name).write_text(text)
    return {"aaaaaaaaaaaaaaaa.json": "corrupt record", "bbbbbbbbbbbbbbbb.json": "corrupt record",
            f"{huge['key']}.json": "width=1180591620717411303424 is outside its range"}


def test_unreadable_records_are_named_and_everything_else_still_loads(tmp_path):
    store = fixture_copy(tmp_path)
    broken = _break(store)
    frame = load_store(store)
    assert len(frame) == 7
    assert {Path(p).name: why for p, why in frame.attrs["skipped"]}.keys() == broken.keys()
    status = run(["-m", "sweeper", "status", "--store", str(store)], tmp_path)
    assert status.returncode == 0, status.stderr
    for name, why in broken.items():
        assert f"{name}: {why}" in status.stdout.replace(str(records_dir(store)) + "/", "")
    report = run(["-m", "analysis", "report", "--store", str(store), "--out", str(tmp_path / "r"),
                  "--no-figures"], tmp_path)
    assert report.returncode == 0, report.stderr
    assert all(name in report.stderr for name in broken) and "7 records" in report.stdout
    nxt = run(["-m", "analysis", "next", "--store", str(store)], tmp_path)
    assert nxt.returncode == 0 and all(name in nxt.stderr for name in broken), nxt.stderr
    for command in (["-m", "sweeper", "status"], ["-m", "analysis", "next"]):
        strict = run([*command, "--store", str(store), "--strict"], tmp_path)
        assert strict.returncode != 0 and "unreadable record" in strict.stderr
        assert "Traceback" not in strict.stderr


def test_a_store_that_is_a_file_or_cannot_be_written_stops_the_sweep_before_training(tmp_path):
    (tmp_path / "afile").write_text("not a store")
    for store, message in (("afile", "is a file, not a directory"), ("afile/sub", "is not writable")):
        result = sweep([*TINY, "lr=-8", f"store={store}"], tmp_path)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and "cell " not in result.stdout


def test_status_piped_into_a_closed_reader_ends_quietly(tmp_path):
    store = fixture_copy(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "sweeper", "status", "--store", str(store)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head` that has read all it wanted
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"BrokenPipeError" not in err and b"Traceback" not in err


# ---- safe to pipe, safe paths -------------------------------------------------------------------

def test_analysis_next_piped_into_bash_runs_no_name_from_the_store(tmp_path):
    store = tmp_path / "store"
    csv = tmp_path / "rows.csv"
    csv.write_text("width,depth,lr,param,optimizer,layernorm,val_loss\n"
                   + "".join(f"{w},4,{lr},mup,adamw,true,{3 + abs(lr + 8) / 10}\n"
                             for w, lr in ((64, -9), (64, -8), (64, -7), (128, -8))))  # 128: next
    for record in ingest(csv, store, experiment="safe"):
        # What a record of an older version (or another user of a shared store) may hold.
        record["experiment"] = "x\ntouch PWNED\n"
        record["key"] = cell_key(record["config"], origin_of("ingest", record["experiment"]))
        path = record_path(store, record["key"])
        path.write_text(json.dumps(record))
    # budget 1: width 128's one cell never settles its row, so the script runs a sweep for it
    nxt = run(["-m", "analysis", "next", "--store", str(store), "--budget", "1"], tmp_path)
    assert nxt.returncode == 0, nxt.stderr
    assert "experiment=x\\ntouch PWNED\\n" in nxt.stdout  # its table's heading, as text
    subprocess.run(["bash", "-c", "cat > script.sh"], input=nxt.stdout, text=True, cwd=tmp_path, check=True)
    syntax = subprocess.run(["bash", "-n", "script.sh"], cwd=tmp_path, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    # Replace the sweep with a stub that only logs its argv, then run the script as a user would.
    (tmp_path / "sweep.py").write_text("import sys; open('argv.log', 'a').write(repr(sys.argv) + '\\n')\n")
    subprocess.run(["bash", "script.sh"], cwd=tmp_path, env={**ENV, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
                   check=True, capture_output=True)
    assert not (tmp_path / "PWNED").exists()
    assert (tmp_path / "argv.log").read_text().count("sweep.py") == nxt.stdout.count("python sweep.py") == 2


def test_curves_takes_only_cell_keys_and_writes_nothing_outside(tmp_path):
    store = fixture_copy(tmp_path)
    outside = tmp_path / "x"
    result = run(["-m", "analysis", "curves", "--store", str(store), "--key", "../../x",
                  "--out", str(tmp_path / "out")], tmp_path)
    assert result.returncode != 0 and "is not a cell key" in result.stderr
    assert not outside.exists() and not (tmp_path / "out").exists()
    with pytest.raises(StoreError, match="not a cell key"):
        run_dir(store, "../escape")
