"""A cell across several ranks (trainer.distributed, trainer.local_ranks): two CPU ranks on gloo
train the step of one process, stop and resume together, and a dead rank fails the cell by name."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeper.store.schema import cell_key
from trainer.config import TrainConfig
from trainer.train import run

ROOT = Path(__file__).resolve().parent.parent
# Two ranks average two half-batch means where one process takes one mean: the same loss and
# gradient up to float32 rounding, which a few steps of training keep near float32's resolution.
RTOL = 1e-5

TINY = dict(width=32, depth=2, batch_size=8, seq_len=32, steps=6, warmup_steps=2, eval_interval=3,
            eval_batches=2, log_interval=1, threads=1, print_steps=False, device="cpu")


@pytest.mark.parametrize("optimizer, shard", [("adamw", False), ("muon_kimi", False), ("adamw", True)])
def test_two_cpu_ranks_train_the_loss_curve_of_one_process(optimizer, shard):
    one = run(TrainConfig(**TINY, optimizer=optimizer, lr=-7, micro_batch_size=8))
    # micro batches of 2 on each rank's 4 rows: the global batch split across ranks and micro-batches;
    # shard=true: weights, gradients and AdamW's states split over the ranks too (FSDP2)
    two = run(TrainConfig(**TINY, optimizer=optimizer, lr=-7, micro_batch_size=2, gpus_per_cell=2, shard=shard))
    assert two.status == one.status == "ok"
    assert [s for s, _ in two.curves["train"]] == [s for s, _ in one.curves["train"]] == list(range(1, 7))
    for (_, a), (_, b) in zip(one.curves["train"] + one.curves["val"], two.curves["train"] + two.curves["val"]):
        assert b == pytest.approx(a, rel=RTOL)
    assert two.val_loss == pytest.approx(one.val_loss, rel=RTOL)
    assert two.val_loss_se == pytest.approx(one.val_loss_se, rel=1e-3)
    # the rank count is how a cell runs, not what it is: the same cell, the same record key
    assert cell_key(two.config) == cell_key(one.config)


def test_sharding_refuses_the_matrix_optimizers_by_name_and_a_single_rank():
    for optimizer in ("muon_kimi", "muon", "shampoo", "soap", "sso"):
        with pytest.raises(ValueError, match=f"optimizer={optimizer} refuses shard=true"):
            TrainConfig(optimizer=optimizer, gpus_per_cell=2, shard=True).validate()
    with pytest.raises(ValueError, match="shard=true splits .* above 1"):
        TrainConfig(optimizer="adamw", shard=True).validate()


def test_a_batch_that_does_not_split_over_the_ranks_is_refused():
    with pytest.raises(ValueError, match="batch_size=6 does not split over .* 4 ranks"):
        TrainConfig(batch_size=6, gpus_per_cell=4).validate()
    with pytest.raises(ValueError, match="micro_batch_size=4 does not divide the 2 rows"):
        TrainConfig(batch_size=8, micro_batch_size=4, gpus_per_cell=2, nodes_per_cell=2).validate()


def _train_cli(run_dir: Path, steps: int, **settings) -> subprocess.Popen:
    args = {**TINY, "steps": steps, "eval_interval": 0, "print_steps": True, "gpus_per_cell": 2,
            "checkpoint_interval": 0, "run_dir": str(run_dir), **settings}
    return subprocess.Popen([sys.executable, "-m", "trainer.train", *(f"{k}={v}" for k, v in args.items())],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _rank1_stepping(run_dir: Path):
    log = run_dir / "ranks" / "rank1.log"
    text = log.read_text() if log.exists() else ""
    return "step 2/" in text and int(re.search(r"pid (\d+)", text).group(1))


def test_a_killed_rank_fails_the_cell_naming_it_and_its_log_within_seconds(tmp_path):
    proc = _train_cli(tmp_path / "run", steps=100_000)
    try:
        pid = _wait_for(lambda: _rank1_stepping(tmp_path / "run"), 60, "rank 1 to train")
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - killed
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "rank 1 of 2 was killed by signal 9" in err
    assert "rank1.log" in err and "step 2/100000" in err  # its log's tail
    assert took < 15


@pytest.mark.parametrize("shard", [False, True])
def test_two_ranks_stopped_by_a_signal_resume_to_the_result_of_an_uninterrupted_run(tmp_path, shard):
    steps = 40
    settings = {"shard": "true", "optimizer": "adamw"} if shard else {}
    whole = _train_cli(tmp_path / "whole", steps=steps, **settings)
    stopped = _train_cli(tmp_path / "stopped", steps=steps, **settings)
    _wait_for(lambda: _rank1_stepping(tmp_path / "stopped"), 60, "rank 1 to train")
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=60)
    assert stopped.returncode == 128 + signal.SIGTERM, err
    assert (tmp_path / "stopped" / "checkpoint.pt").exists()
    resumed = _train_cli(tmp_path / "stopped", steps=steps, **settings)
    _, resumed_err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, resumed_err
    assert "resuming from" in resumed_err
    whole.communicate(timeout=120)
    a, b = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("whole", "stopped"))
    assert 0 < len([1 for line in err.splitlines() if line.startswith("step ")]) < steps  # stopped mid-run
    assert b["curves"]["train"] == a["curves"]["train"]
    assert b["val_loss"] == a["val_loss"]


def _sweep(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), "-m", "experiment=smoke", "width=32",
                           "lr=-8", "steps=6", *args], cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=240)


def test_a_sweep_of_two_rank_cells_writes_the_record_of_one_process_and_reruns_nothing(tmp_path):
    from sweeper.store.index import load_store
    from sweeper.store.records import read_record

    one = _sweep(["store=one"], tmp_path)
    two = _sweep(["store=two", "gpus_per_cell=2"], tmp_path)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    (key,) = load_store(tmp_path / "one")["key"]
    assert list(load_store(tmp_path / "two")["key"]) == [key]  # the same cell: the same key
    a, b = (read_record(tmp_path / s, key) for s in ("one", "two"))
    assert b["status"] == a["status"] == "ok" and b["config"] == a["config"]
    assert b["metrics"]["val_loss"] == pytest.approx(a["metrics"]["val_loss"], rel=RTOL)
    for (sa, la), (sb, lb) in zip(a["curves"]["train"], b["curves"]["train"]):
        assert sb == sa and lb == pytest.approx(la, rel=RTOL)
    again = _sweep(["store=two", "gpus_per_cell=2"], tmp_path)
    assert again.returncode == 0 and "skipping 1 of 1 cells already in the store" in again.stdout


def test_plan_prices_cells_on_several_gpus_and_names_those_that_need_sharding(capsys):
    from sweeper.__main__ import main as sweeper_main

    def plan(*args):
        assert sweeper_main(["plan", "experiment=paper_table9", "lr=-8", *args, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    one, eight = plan(), plan("--gpus-per-cell", "8", "--scaling-efficiency", "0.8")
    assert eight["gpus_per_cell"] == 8 and eight["scaling_efficiency"] == 0.8
    for a, b in zip(one["cells"], eight["cells"]):
        assert b["gpus"] == 8 and b["gpu_hours"] == pytest.approx(8 * b["hours"])
        # each GPU takes an eighth of the batch, at 80 % of one GPU's throughput
        assert b["hours"] == pytest.approx(a["hours"] / (8 * 0.8), rel=0.05)
        assert b["peak_memory_gb"] < a["peak_memory_gb"] and b["sharded_memory_gb"] < b["peak_memory_gb"]
    assert eight["total_gpu_hours"] == pytest.approx(sum(c["gpu_hours"] for c in eight["cells"]))
    # ~26 B weights: no GPU holds them whole with their optimizer state, 16 hold them sharded
    big = plan("width=8192", "depth=32", "--gpus-per-cell", "8", "--nodes-per-cell", "2")
    assert [(c["width"], c["depth"]) for c in big["cells_needing_shard"]] == [(8192, 32)]
    assert big["cells"][0]["micro_batch_size"] is None and big["cells"][0]["gpus"] == 16
    assert plan()["cells_needing_shard"] == []


def test_more_local_ranks_than_gpus_is_refused_before_any_starts(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # the one CUDA call: a machine with 1 GPU
    with pytest.raises(ValueError, match="gpus_per_cell=2 ranks, one per GPU, but this machine has 1 GPU"):
        run(TrainConfig(**{**TINY, "device": "cuda"}, gpus_per_cell=2, run_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
