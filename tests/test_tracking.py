"""Live view of a sweep's cells: TensorBoard event files and W&B runs that carry the record's curves,
named by the cell's key; a tracker that fails never fails its cell."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper.jobs.job import run_cell
from sweeper.store.index import load_store
from sweeper.store.records import read_record
from trainer.callbacks import Callback
from trainer.config import TrainConfig
from trainer.tracking import wandb_run_id
from trainer.train import main as train_main, run

ROOT = Path(__file__).resolve().parent.parent
# Two cells of 6 steps: train points at steps 1, 2, 4, 6, val at 3 and 6.
CELLS = ["-m", "experiment=smoke", "width=32,64", "lr=-9", "steps=6", "log_interval=2",
         "eval_interval=3", "store=store"]


def sweep(args, cwd, env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    env.pop("WANDB_PROJECT", None)  # the store's name is the project unless this is set
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def scalars(accumulator, tag):
    return [[event.step, event.value] for event in accumulator.Scalars(tag)]


def test_a_tensorboard_sweep_writes_the_records_curves_under_store_tb_key(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    done = sweep([*CELLS, "logger=tensorboard"], tmp_path, {})
    assert done.returncode == 0, done.stderr[-3000:]
    store = tmp_path / "store"
    frame = load_store(store)
    keys = list(frame["key"])
    # runs named by their settings (then the key's start), as a person scans a run list
    names = {key: f"mup muon_kimi w{w} d2 lr-9 s0 {key[:8]}" for key, w in zip(keys, frame["width"])}
    assert len(keys) == 2 and sorted(p.name for p in (store / "tb").iterdir()) == sorted(names.values())
    for key in keys:
        curves = read_record(store, key)["curves"]
        events = EventAccumulator(str(store / "tb" / names[key]))
        events.Reload()
        # the HParams dashboard: the cell's settings, val/loss as the metric, a finished session
        content = events.PluginTagToContent("hparams")
        experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        assert [m.name.tag for m in experiment.metric_infos] == ["val/loss"]
        start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
        width = int(frame.set_index("key").loc[key, "width"])
        assert start.hparams["width"].number_value == width and start.hparams["lr"].number_value == -9
        assert start.hparams["param"].string_value == "mup"
        assert "_hparams_/session_end_info" in content
        assert [s for s, _ in curves["train"]] == [1, 2, 4, 6] and len(curves["val"]) == 2
        for tag, curve in (("train/loss", curves["train"]), ("val/loss", curves["val"])):
            logged = scalars(events, tag)
            assert [s for s, _ in logged] == [s for s, _ in curve]
            assert [v for _, v in logged] == pytest.approx([v for _, v in curve], rel=1e-6)
        for tag in ("train/lr_factor", "train/tokens_per_s"):
            assert [s for s, _ in scalars(events, tag)] == [1, 2, 4, 6]
            assert all(v > 0 for _, v in scalars(events, tag))
        config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
        assert f"| run_name | {names[key]} |" in config and "| width | " in config


class DiesAtStep(Callback):
    """A job killed mid-run, past its last checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_log(self, step, metrics):
        if step == self.step:
            raise SystemExit(143)


def test_a_resumed_run_shows_each_step_once_in_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = TrainConfig(width=32, depth=2, batch_size=4, seq_len=32, steps=6, warmup_steps=1, log_interval=1,
                         eval_interval=2, eval_batches=1, threads=1, checkpoint_interval=3,
                         data_dir=str(tmp_path / "data"), run_dir=str(tmp_path / "run"),
                         logger="tensorboard", tb_dir=str(tmp_path / "tb"), run_name="cell")
    with pytest.raises(SystemExit):  # steps 4 and 5 logged, the checkpoint is at 3
        run(config, [DiesAtStep(6)])
    curves = run(config).curves  # the requeued job: resumes at step 3
    events = EventAccumulator(str(tmp_path / "tb" / "cell"))
    events.Reload()
    for tag, curve in (("train/loss", curves["train"]), ("val/loss", curves["val"])):
        assert scalars(events, tag) == [[s, pytest.approx(v, rel=1e-6)] for s, v in curve]
    assert [s for s, _ in curves["train"]] == [1, 2, 3, 4, 5, 6]


def wandb_records(path: Path):
    """The records of a W&B transaction log (run-<id>.wandb): LevelDB's log format, records split
    over 32 KiB blocks, after W&B's 7-byte header; each a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    pos, pieces = header, b""
    while pos + header <= len(data):
        if block - pos % block < header:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        piece, pos = data[pos + header:pos + header + length], pos + header + length
        pieces = piece if kind in (1, 2) else pieces + piece  # full, first | middle, last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record


def test_a_wandb_offline_cell_logs_its_history_config_and_key(tmp_path):
    env = {name: str(tmp_path / "wandb_home") for name in
           ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")}
    env["WANDB_MODE"] = "offline"
    os.makedirs(env["WANDB_DIR"])
    done = sweep([*CELLS[:2], "width=32", *CELLS[3:], "logger=wandb"], tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    [record] = [read_record(tmp_path / "store", key) for key in load_store(tmp_path / "store")["key"]]
    key = record["key"]
    name = f"mup muon_kimi w32 d2 lr-9 s0 {key[:8]}"  # its settings name it
    run_id = wandb_run_id(name)
    [log] = (tmp_path / "wandb_home" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")

    rows, run = [], None  # rows: one dict per logged step
    for entry in wandb_records(log):
        if entry.HasField("run"):
            run = entry.run
        if entry.HasField("history"):
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in entry.history.item})
    # The settings name the run, and its id comes from the name (a requeued job resumes it);
    # experiment and store name its group and project; the config is W&B's config.
    assert (run.run_id, run.display_name, run.run_group, run.project) == (run_id, name, "smoke", "store")
    assert run.resume
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["run_name"] == name
    assert {name: config[name] for name in record["config"]} == record["config"]
    for tag, curve in (("train/loss", record["curves"]["train"]), ("val/loss", record["curves"]["val"])):
        logged = [[row["_step"], row[tag]] for row in rows if tag in row]
        assert [s for s, _ in logged] == [s for s, _ in curve]
        assert [v for _, v in logged] == pytest.approx([v for _, v in curve])
    assert all("train/lr_factor" in row and "train/tokens_per_s" in row
               for row in rows if "train/loss" in row)

class BreaksOnSecondLog(Callback):
    """A tracker whose disk fills up mid-run: it raises from its second log on."""

    def __init__(self) -> None:
        self.logs = 0

    def on_log(self, step, metrics):
        self.logs += 1
        if self.logs >= 2:
            raise OSError(28, "No space left on device")


class Watches(Callback):
    def __init__(self) -> None:
        self.calls = []

    def on_log(self, step, metrics):
        self.calls.append(("log", step, metrics["train/loss"]))

    def on_eval(self, step, metrics):
        self.calls.append(("eval", step, metrics["val/loss"]))

    def on_end(self, result):
        self.calls.append(("end", result.status))


def test_a_tracker_that_raises_mid_run_leaves_the_cell_ok(tmp_path, capsys):
    config = TrainConfig(width=32, depth=2, batch_size=4, seq_len=32, steps=6, warmup_steps=1, log_interval=1,
                         eval_interval=3, eval_batches=1, threads=1, data_dir=str(tmp_path / "data"))
    broken, watcher = BreaksOnSecondLog(), Watches()
    record = run_cell(config, tmp_path / "store", callbacks=[broken, watcher])
    assert record["status"] == "ok" and record["metrics"]["steps_done"] == 6
    assert broken.logs == 2  # not called again once it failed
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: BreaksOnSecondLog.on_log failed (OSError: [Errno 28] No space left "
                        "on device); training goes on without it"]
    # The other watcher saw the whole run, as the record has it.
    curves = record["curves"]
    assert watcher.calls == sorted(
        [("log", s, v) for s, v in curves["train"]] + [("eval", s, v) for s, v in curves["val"]],
        key=lambda call: (call[1], call[0] == "eval")) + [("end", "ok")]


def test_an_unknown_or_missing_logger_is_a_one_line_error(monkeypatch, capsys):
    assert train_main(["logger=mlflow"]) == 2
    assert capsys.readouterr().err == "error: logger='mlflow': choose none, tensorboard, wandb\n"
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    assert train_main(["logger=wandb"]) == 2
    assert capsys.readouterr().err == (
        "error: logger=wandb needs the wandb package: pip install -e '.[tracking]'\n")
