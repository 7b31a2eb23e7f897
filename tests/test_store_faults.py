"""A store on a bad day: a result that cannot be written is a failure, and every leftover heals or is
named (records that cannot be written, torn claims, journals and checkpoints, clock skew, edited
records, bad CSVs, reused report folders)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from analysis.ingest import IngestError, ingest
import sweeper.store.claims as claims_module
from sweeper.store.claims import STALE_S, claim_path, live_claims, try_claim
from sweeper.store.leftovers import clean
from sweeper.store.schema import make_record
from sweeper.store.index import load_store
from sweeper.store.records import record_path, record_status, records_dir, write_record
from trainer.config import CHECKPOINT, TrainConfig
from trainer.train import run as train

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CAN_FREEZE = os.geteuid() == 0 and shutil.which("chattr") is not None


def cli(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def sweep(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return cli([str(ROOT / "sweep.py"), "-m", "experiment=smoke", "depth=2", "warmup_steps=1", *args],
               cwd, timeout)


def trained_keys(stdout: str) -> set[str]:
    """Keys of the cells a sweep trained: each job prints 'cell <key> width=...' when it ends."""
    return {line.split()[1] for line in stdout.splitlines()
            if line.startswith("cell ") and " width=" in line}


def attempted(store: Path) -> set[str]:
    return {d.name for d in (store / "attempts").iterdir() if any(d.glob("*.json"))}


def _chattr(flag: str, folder: Path) -> None:
    subprocess.run(["chattr", flag, str(folder)], check=True)


@contextlib.contextmanager
def records_turn_unwritable(store: Path):
    """records/ turns unwritable, as a full disk or a lost quota leaves it (chattr +i: no file can be
    made in it, even by root), once the first cell is being trained (its claim is there)."""
    records_dir(store).mkdir(parents=True)
    stop, frozen = threading.Event(), threading.Event()

    def watch() -> None:
        while not stop.wait(0.01):
            if any((store / "claims").glob("*.json")):
                _chattr("+i", records_dir(store))
                frozen.set()
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield frozen
    finally:
        stop.set()
        watcher.join()
        if frozen.is_set():
            _chattr("-i", records_dir(store))


needs_freeze = pytest.mark.skipif(not CAN_FREEZE, reason="makes a folder unwritable with chattr +i (root)")


# ---- a record that cannot be written ------------------------------------------------------------

@needs_freeze
@pytest.mark.parametrize("jobs", [1, 2])  # in the sweep's process; two worker processes side by side
def test_a_sweep_whose_records_turn_unwritable_fails_fast_and_the_rerun_trains_nothing_again(tmp_path, jobs):
    store = tmp_path / "store"
    grid = ["width=32,64", "lr=-10:-9", "steps=4", f"store={store}", f"jobs={jobs}"]
    with records_turn_unwritable(store) as frozen:
        broken = sweep(grid, tmp_path)  # how soon it ends: benchmarks/unwritable_records.py
        assert frozen.is_set()
        status = cli(["-m", "sweeper", "status", "--store", str(store)], ROOT)
        again = sweep(grid, tmp_path)  # still unwritable: stops before training anything
    assert broken.returncode != 0
    assert "RecordWriteError" in broken.stderr and "Operation not permitted" in broken.stderr
    # the cells already training when the first record fails end failed; no other cell starts
    assert f"[sweep] {jobs}/4 cells finished: 0 ok, 0 diverged, {jobs} failed" in broken.stdout
    assert f"[sweep] stopping: the store cannot record results; {4 - jobs} cells not launched" in broken.stdout
    assert not list(records_dir(store).glob("*.json"))
    finished = attempted(store)  # trained, their attempts kept, their records not written
    assert len(finished) == jobs and trained_keys(broken.stdout) == finished
    assert status.returncode == 0 and f"{jobs} cell(s) have a finished attempt but no record yet" in status.stdout
    assert again.returncode != 0 and "is not writable" in again.stderr and not trained_keys(again.stdout)

    writable = sweep(grid, tmp_path)
    assert writable.returncode == 0, writable.stderr[-3000:]
    assert f"wrote the records of {jobs} cell(s) from their attempts" in writable.stdout
    assert len(trained_keys(writable.stdout)) == 4 - jobs and not finished & trained_keys(writable.stdout)
    frame = load_store(store)
    assert len(frame) == 4 and set(frame["status"]) == {"ok"}


@needs_freeze
def test_a_transfer_search_that_cannot_record_stops_and_resumes_without_retraining(tmp_path):
    store = tmp_path / "store"
    # one cell at a time, so exactly one cell of round 1 has trained when its record fails
    args = ["width=32,64", "lr=-10:-7", "steps=8", "search=transfer", f"store={store}", "jobs=1"]
    with records_turn_unwritable(store):
        broken = sweep(args, tmp_path, timeout=120)  # before: round 1 forever, the same cells again
    assert broken.returncode != 0
    assert "RecordWriteError" in broken.stderr and broken.stdout.count("[search] round") == 1
    [finished] = attempted(store)
    assert trained_keys(broken.stdout) == {finished} and not record_path(store, finished).exists()

    again = sweep(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert trained_keys(again.stdout) and finished not in trained_keys(again.stdout)
    assert record_status(store, finished) == "ok" and "of the grid's compute" in again.stdout


def test_a_finished_attempt_without_its_record_is_written_not_trained_again(tmp_path):
    store = tmp_path / "store"
    args = ["width=32", "lr=-10:-9", "steps=4", f"store={store}"]
    first = sweep(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    lost = sorted(records_dir(store).glob("*.json"))[0]
    content = json.loads(lost.read_text())
    lost.unlink()  # a job killed between its attempt and its record

    status = cli(["-m", "sweeper", "status", "--store", str(store)], ROOT)
    assert "1 ok" in status.stdout and not lost.exists()  # status only reads
    cleaned = cli(["-m", "sweeper", "clean", "--store", str(store)], ROOT)
    assert "wrote the records of 1 cell(s) from their attempts" in cleaned.stdout
    status = cli(["-m", "sweeper", "status", "--store", str(store)], ROOT)
    assert "2 ok" in status.stdout and json.loads(lost.read_text()) == content
    lost.unlink()
    again = sweep(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "wrote the records of 1 cell(s)" in again.stdout and trained_keys(again.stdout) == set()


# ---- leftovers that heal ------------------------------------------------------------------------

def test_a_torn_search_journal_is_repaired_and_nothing_is_retrained(tmp_path):
    store = tmp_path / "store"
    args = ["width=32", "lr=-10:-7", "steps=4", "search=transfer", f"store={store}"]
    first = sweep(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    journal = store / "search" / "journal.log"
    os.truncate(journal, journal.stat().st_size - 37)  # its last line cut by a kill or a full disk

    again = sweep(args, tmp_path)  # before: a JSONDecodeError traceback on every run
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"[search] repaired {journal}" in again.stdout and trained_keys(again.stdout) == set()
    once_more = sweep(args, tmp_path)
    assert once_more.returncode == 0, once_more.stderr[-3000:]
    assert "repaired" not in once_more.stdout and trained_keys(once_more.stdout) == set()
    assert journal.read_bytes().endswith(b"\n")


def test_a_garbage_or_empty_claim_is_removed_with_a_line_and_its_cell_trains(tmp_path, capsys,
                                                                               sweep_cell_key):
    key = "0123456789abcdef"
    path = claim_path(tmp_path, key)
    path.parent.mkdir(parents=True)
    path.write_text("")
    held, owner = try_claim(tmp_path, key)
    assert held is not None and owner is None
    held.release()
    assert f"removed the claim file {path}: an empty file" in capsys.readouterr().out

    path.write_bytes(b"\x00garbage")
    lines = clean(tmp_path).lines
    assert not path.exists() and any(str(path) in line and "no claim" in line for line in lines)

    store = tmp_path / "store"
    args = ["width=32", "lr=-10", "steps=2", f"store={store}"]
    cell = claim_path(store, sweep_cell_key(["experiment=smoke", "depth=2", "warmup_steps=1", *args[:3]]))
    cell.parent.mkdir(parents=True)
    cell.write_text("{not json")
    swept = sweep(args, tmp_path)
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert "no run owns their cells" in swept.stdout and set(load_store(store)["status"]) == {"ok"}


def test_a_claim_stamped_in_the_future_is_suspect_after_the_stale_limit(tmp_path, monkeypatch):
    key = "0123456789abcdef"
    path = claim_path(tmp_path, key)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": "another-host", "pid": 1, "job_id": None, "token": "t"}))
    year = 365 * 86400
    os.utime(path, (time.time() + year, time.time() + year))  # touch -d "+1 year"
    held, owner = try_claim(tmp_path, key)
    assert held is not None and owner is None
    held.release()

    path.write_text(json.dumps({"host": "another-host", "pid": 1, "job_id": None, "token": "t"}))
    soon = time.time() + STALE_S / 2  # within the limit either way: a live claim of a skewed clock
    os.utime(path, (soon, soon))
    held, owner = try_claim(tmp_path, key)
    assert held is None and owner.host == "another-host"

    # This node's clock an hour ahead: the claim, stamped just now by the store's clock, is live.
    path.write_text(json.dumps({"host": "another-host", "pid": 1, "job_id": None, "token": "t"}))
    ahead = time.time() + 3600
    monkeypatch.setattr(claims_module, "time", SimpleNamespace(time=lambda: ahead))
    held, owner = try_claim(tmp_path, key)
    assert held is None and owner.host == "another-host"
    assert list(live_claims(tmp_path)) == [key] and not clean(tmp_path).lines and path.exists()


def test_a_torn_checkpoint_is_moved_aside_and_the_run_restarts_from_step_0(tmp_path):
    config = TrainConfig(width=32, depth=2, batch_size=4, seq_len=32, eval_batches=2, threads=1, steps=6,
                         warmup_steps=1, checkpoint_interval=3, data_dir=str(tmp_path / "data"),
                         run_dir=str(tmp_path / "run"))
    fresh = train(config)  # leaves its step-6 checkpoint
    checkpoint = tmp_path / "run" / CHECKPOINT
    os.truncate(checkpoint, 1000)  # truncate -s 1000: a kill or a full disk during the save

    script = ("import sys; from trainer.config import TrainConfig; from trainer.train import run; "
              f"print(run(TrainConfig(**{config.to_dict()!r})).val_loss)")
    again = cli(["-c", script], ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert float(again.stdout.split()[-1]) == pytest.approx(fresh.val_loss)
    assert (f"checkpoint {checkpoint} is unreadable (RuntimeError: PytorchStreamReader" in again.stderr
            and "moved to checkpoint.pt.corrupt, the run restarts from step 0" in again.stderr)
    assert "step 1/6" in again.stderr and checkpoint.with_name("checkpoint.pt.corrupt").is_file()


def test_run_dir_that_is_a_file_is_one_clear_line(tmp_path):
    blocker = tmp_path / "run"
    blocker.write_text("not a directory")
    ran = cli(["-m", "trainer.train", "width=32", "depth=2", "steps=1", "warmup_steps=0", "batch_size=2",
               "seq_len=16", "eval_batches=1", "dataset=embedded", f"run_dir={blocker}"], ROOT)
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    assert ran.stderr.strip().splitlines() == [f"error: run_dir={blocker} is a file: give a directory "
                                               f"(new or a run's) for the run's checkpoints"]


# ---- records, CSVs and report folders that are not what they seem -------------------------------

def test_a_record_whose_settings_are_another_cells_is_named_and_satisfies_no_cell(tmp_path):
    records = [make_record({"width": 32, "lr": lr, "steps": 4}, "ok", metrics={"val_loss": 5.0 + lr})
               for lr in (-9.0, -8.0)]
    for record in records:
        write_record(tmp_path, record)
    edited = record_path(tmp_path, records[0]["key"])
    content = json.loads(edited.read_text())
    content["config"]["lr"] = -7.0  # edited by hand, file name kept
    edited.write_text(json.dumps(content))

    frame = load_store(tmp_path)
    assert list(frame["lr"]) == [-8.0]
    [(path, reason)] = frame.attrs["skipped"]
    assert path == str(edited) and f"filed as cell {records[0]['key']}" in reason
    assert record_status(tmp_path, records[0]["key"]) is None  # a sweep trains -9 again
    status = cli(["-m", "sweeper", "status", "--store", str(tmp_path)], ROOT)
    assert f"warning: skipped {edited}" in status.stdout and "1 records: 1 ok" in status.stdout


def test_ingest_refuses_a_column_named_twice(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("width,depth,lr,param,optimizer,layernorm,val_loss,width\n"
                   "128,4,-8,sp,adamw,true,4.4,256\n")
    with pytest.raises(IngestError, match="names the column\\(s\\) 'width' more than once"):
        ingest(csv, tmp_path / "store")
    assert not (tmp_path / "store").exists()


def _report(store: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli(["-m", "analysis", "report", "--store", str(store), "--out", str(out), "--no-figures",
                *extra], ROOT)


def test_a_reused_report_folder_holds_only_the_new_report(tmp_path):
    for name, param in (("a", "sp"), ("b", "mup")):
        csv = tmp_path / f"{name}.csv"
        csv.write_text("width,depth,lr,param,optimizer,layernorm,val_loss\n" + "".join(
            f"{w},2,{lr},{param},adamw,true,{4 + (lr + 8) ** 2 / w}\n" for w in (32, 64) for lr in (-9, -8, -7)))
        ingest(csv, tmp_path / name)
    out = tmp_path / "out"
    assert _report(tmp_path / "a", out).returncode == 0
    mine = out / "notes.txt"
    mine.write_text("kept")
    first = {p.relative_to(out) for p in out.rglob("*") if p.is_file()} - {Path("notes.txt")}
    second = _report(tmp_path / "b", out)
    assert second.returncode == 0, second.stderr
    files = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    assert not {p for p in first if p.parent.name == "tables"} & files  # a's tables are gone
    assert any("param=mup" in p.name for p in files) and mine.read_text() == "kept"
    assert f"({tmp_path / 'b'})" in (out / "report.md").read_text().splitlines()[0]

    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("mine")
    refused = _report(tmp_path / "a", other)
    assert refused.returncode == 1 and "holds files and no report" in refused.stderr
    assert _report(tmp_path / "a", other, "--force").returncode == 0 and (other / "report.md").is_file()
