"""The training loop: results, divergence, checkpoint/resume, bad input, model shapes."""
from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from trainer.config import CHECKPOINT, TrainConfig
from trainer.model import GPT, ModelShape, Multipliers
from trainer.train import run, standard_error

REPO = Path(__file__).resolve().parent.parent
TINY = dict(width=64, depth=2, batch_size=4, seq_len=32, eval_batches=2, threads=1, log_interval=1)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


def tiny(data_dir: str, **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "data_dir": data_dir, **overrides})


def test_run_learns_and_reports_everything_a_record_needs(data_dir):
    result = run(tiny(data_dir, steps=30, warmup_steps=3, eval_interval=10, lr=-6))
    record = result.to_dict()
    assert record["status"] == "ok"
    assert record["curves"]["train"][-1][1] < record["curves"]["train"][0][1] - 0.5
    assert [s for s, _ in record["curves"]["val"]] == [10, 20, 30]
    assert record["val_loss"] == record["curves"]["val"][-1][1]
    assert 0 < record["val_loss_se"] < 0.1 * record["val_loss"]  # 2 eval batches: their spread, not 0
    assert record["tokens"] == 30 * 4 * 32 and record["steps_done"] == 30
    # precision=auto is fp32 on every CPU (AMX or not), so this holds on any machine without CUDA
    assert record["precision"] == "fp32" == record["config"]["precision"] and record["device"] == "cpu"
    assert record["tokens_per_s"] > 0 and record["wall_time_s"] > 0
    assert record["versions"]["torch"] == torch.__version__
    assert record["config"]["width"] == 64


def test_divergence_stops_early_with_nan_val_loss(data_dir):
    result = run(tiny(data_dir, steps=40, warmup_steps=0, lr=4, param="sp", optimizer="sgd"))
    assert result.status == "diverged"
    assert result.val_loss is None and result.val_loss_se is None
    assert result.steps_done < 40


def test_standard_error_is_that_of_the_mean_of_the_batch_losses():
    losses = [3.1, 2.9, 3.4, 3.0]
    assert standard_error(losses) == pytest.approx(statistics.stdev(losses) / math.sqrt(len(losses)))
    assert standard_error([3.0]) is None and standard_error([3.0, math.inf]) is None


def _train_cli(args: list[str], **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "trainer.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _cli_args(run_dir: Path, data_dir: str) -> list[str]:
    return ["width=64", "depth=2", "batch_size=4", "seq_len=32", "steps=60", "warmup_steps=5",
            "eval_interval=20", "eval_batches=2", "threads=1", "checkpoint_interval=10",
            "log_interval=1", f"data_dir={data_dir}", f"run_dir={run_dir}"]


def _wait_for_step(proc: subprocess.Popen, step: int) -> None:
    for line in proc.stderr:
        if line.startswith(f"step {step}/"):
            return
    raise AssertionError(f"run ended before step {step}: rc={proc.wait()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, data_dir, sig):
    whole = _train_cli(_cli_args(tmp_path / "whole", data_dir))
    out, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err
    expected = json.loads((tmp_path / "whole" / "result.json").read_text())

    interrupted = _train_cli(_cli_args(tmp_path / "cut", data_dir))
    _wait_for_step(interrupted, 25)
    interrupted.send_signal(sig)
    interrupted.communicate(timeout=120)
    assert interrupted.returncode in (128 + sig, -sig)
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    assert not (tmp_path / "cut" / "result.json").exists()

    resumed = _train_cli(_cli_args(tmp_path / "cut", data_dir))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming from" in err
    got = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert got["val_loss"] == expected["val_loss"]
    assert got["curves"] == expected["curves"]


@pytest.mark.parametrize("override, message", [
    ("optimizer=adamm", "shampoo, soap, sophia, sso"),
    ("optimizer=adamw hessian_interval=5", "sophia only"),
    ("param=mupp", "mup_k1"),
    ("width=96", "multiple of 64"),
    ("widht=64", "did you mean 'width'"),
    ("dataset=/nonexistent/corpus", "/nonexistent/corpus"),
])
def test_bad_input_is_one_clear_error(override, message):
    proc = _train_cli([*override.split(), "steps=1", "warmup_steps=0"])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("layernorm", [True, False])
def test_model_shapes(layernorm):
    shape = ModelShape(vocab_size=256, seq_len=32, width=128, depth=3, n_head=2, layernorm=layernorm)
    model = GPT(shape, Multipliers(1.0, 0.5, 0.25))
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes["wte.weight"] == (256, 128) and shapes["wpe.weight"] == (32, 128)
    assert shapes["h.2.attn.q.weight"] == (128, 128) and shapes["h.0.mlp.fc.weight"] == (512, 128)
    assert shapes["h.0.mlp.proj.weight"] == (128, 512) and shapes["lm_head.weight"] == (256, 128)
    assert "lm_head.bias" not in shapes
    norms = [n for n in shapes if "ln_" in n]
    assert len(norms) == (2 * (3 * 2 + 1) if layernorm else 0)
    logits, blocks = model(torch.zeros(2, 32, dtype=torch.long), return_block_outputs=True)
    assert logits.shape == (2, 32, 256) and len(blocks) == 3


def test_output_multiplier_scales_logits():
    shape = ModelShape(vocab_size=256, seq_len=8, width=64, depth=1, n_head=1)
    torch.manual_seed(0)
    model = GPT(shape, Multipliers(output=1.0))
    idx = torch.randint(0, 256, (1, 8))
    base = model(idx)
    model.multipliers = Multipliers(output=0.25)
    assert torch.allclose(model(idx), 0.25 * base, atol=1e-6)


@pytest.mark.parametrize("optimizer, lr", [("shampoo", -6), ("soap", -8), ("sophia", -9), ("sso", -6)])
def test_new_optimizer_learns_the_smoke_cell_and_resumes_to_the_same_result(tmp_path, data_dir, optimizer, lr):
    # The smoke cell (conf/experiment/smoke.yaml) at width 64; SIGTERM at step 5, then resume: the
    # optimizer's state (preconditioners, Hessian estimate, power-iteration vectors) is checkpointed.
    args = ["width=64", "depth=2", "batch_size=8", "seq_len=64", "steps=20", "warmup_steps=2", "eval_interval=0",
            "eval_batches=2", "threads=1", "log_interval=1", f"optimizer={optimizer}", f"lr={lr}", f"data_dir={data_dir}"]
    whole = _train_cli(args + [f"run_dir={tmp_path / 'whole'}"])
    _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err
    expected = json.loads((tmp_path / "whole" / "result.json").read_text())
    train = [loss for _, loss in expected["curves"]["train"]]
    assert expected["status"] == "ok" and train[-1] < train[0] - 2.0, train

    cut = _train_cli(args + [f"run_dir={tmp_path / 'cut'}"])
    _wait_for_step(cut, 5)
    cut.send_signal(signal.SIGTERM)
    cut.communicate(timeout=120)
    assert cut.returncode == 128 + signal.SIGTERM
    resumed = _train_cli(args + [f"run_dir={tmp_path / 'cut'}"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "resuming from" in err, err
    got = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert got["curves"] == expected["curves"] and got["val_loss"] == expected["val_loss"]


def test_bf16_autocast_learns_and_is_recorded_as_bf16(data_dir):
    settings = dict(steps=12, warmup_steps=2, eval_interval=0, lr=-6)
    bf16 = run(tiny(data_dir, precision="bf16", **settings))
    fp32 = run(tiny(data_dir, precision="fp32", **settings))
    assert bf16.precision == bf16.config["precision"] == "bf16" and bf16.status == "ok"
    train = [loss for _, loss in bf16.curves["train"]]
    assert train[-1] < train[0] - 0.5
    # the same cell in bf16 computes other numbers than in fp32, close to them
    assert bf16.val_loss != fp32.val_loss and abs(bf16.val_loss - fp32.val_loss) < 0.2


def test_compile_trains_the_same_steps_as_eager(data_dir):
    # inductor on a CPU: ~15 s here once its cache is warm (the first compile on a machine, ~2 min)
    settings = dict(width=32, depth=1, batch_size=2, seq_len=16, steps=3, warmup_steps=1, eval_interval=0,
                    eval_batches=1, precision="fp32")
    compiled = run(tiny(data_dir, compile=True, **settings))
    eager = run(tiny(data_dir, **settings))
    for (_, a), (_, b) in zip(compiled.curves["train"] + compiled.curves["val"], eager.curves["train"] + eager.curves["val"]):
        assert a == pytest.approx(b, rel=1e-4)


def test_a_checkpoint_resumes_only_at_the_precision_it_was_written_at(tmp_path, data_dir):
    cfg = tiny(data_dir, steps=2, warmup_steps=1, eval_interval=0, checkpoint_interval=2, run_dir=str(tmp_path),
               precision="fp32")
    run(cfg)
    with pytest.raises(ValueError, match="precision='fp32' there, 'bf16' here"):
        run(replace(cfg, precision="bf16"))
    # a checkpoint from before precision was recorded was written by an fp32 run
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    del saved["run"]["precision"]
    torch.save(saved, tmp_path / CHECKPOINT)
    assert run(cfg).steps_done == 2  # resumed at its last step: nothing left but the evaluation
    with pytest.raises(ValueError, match="precision='fp32' there, 'bf16' here"):
        run(replace(cfg, precision="bf16"))


def test_checkpoint_writers_with_one_pid_never_collide(tmp_path):
    # two nodes of a shared filesystem can run a trainer under the same pid: threads of one process
    # stand in for them; a pid-only temp name let one writer rename the other's half-written file
    import threading

    from trainer.train import save_checkpoint

    path, errors = tmp_path / "checkpoint.pt", []

    def write(i: int) -> None:
        try:
            for _ in range(20):
                save_checkpoint(path, {"writer": i, "weights": torch.full((20_000,), float(i))})
        except Exception as err:  # noqa: BLE001 -- any failure of a writer fails the test
            errors.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    saved = torch.load(path, weights_only=True)
    assert torch.equal(saved["weights"], torch.full((20_000,), float(saved["writer"])))
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
