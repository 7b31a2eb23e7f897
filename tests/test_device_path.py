"""The training loop's accelerator path, run on a CPU with just its CUDA calls replaced: resume onto
another device, fused AdamW kept across a resume, no host read of a device value between read-back
steps, pinned batches copied without waiting, step time from device events."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import trainer.device as device_module
import trainer.step as step_module
import trainer.train as train_module
from trainer.config import CHECKPOINT, TrainConfig
from trainer.optim.build import build_optimizers
from trainer.parameterization import build_model, param_groups
from trainer.train import load_optimizer_state, restore_checkpoint, run

REPO = Path(__file__).resolve().parent.parent
TINY = dict(width=64, depth=2, batch_size=4, seq_len=32, eval_batches=2, threads=1, eval_interval=0,
            warmup_steps=1, optimizer="adamw", precision="fp32")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


def test_a_cpu_checkpoint_resumes_onto_another_device(tmp_path, data_dir, monkeypatch):
    cfg = TrainConfig(**TINY, steps=3, checkpoint_interval=3, run_dir=str(tmp_path), data_dir=data_dir)
    run(cfg)
    # The other device: meta (tensors without storage). torch.load(map_location=device) would make
    # the data generator's state a meta tensor, which torch.Generator.set_state refuses.
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: loads.append(kw.get("map_location")) or real_load(*a, **kw))
    model = build_model(cfg, 256).to("meta")
    optimizers = build_optimizers(param_groups(model, cfg), cfg)
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0) for o in optimizers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "copying into a meta parameter is a no-op"
        state, generator_state = restore_checkpoint(tmp_path / CHECKPOINT, cfg, model, optimizers, schedules)
    assert loads == ["cpu"]
    assert state["step"] == 3
    torch.Generator().set_state(generator_state)  # a CPU ByteTensor, as the generator needs
    moments = [s["exp_avg"] for o in optimizers for s in o.state.values()]
    assert moments and all(m.device.type == "meta" for m in moments)


def test_a_checkpoint_of_an_unfused_adamw_resumes_fused():
    # A checkpoint written on a CPU (AdamW unfused) into the fused AdamW a CUDA run builds; fused
    # AdamW also runs on a CPU, so no GPU is needed to check it steps.
    model = torch.nn.Linear(8, 8)
    plain = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    plain.step()
    fused = torch.optim.AdamW(model.parameters(), fused=True)
    load_optimizer_state(fused, plain.state_dict())
    assert fused.param_groups[0]["fused"] is True
    assert fused.state[model.weight]["step"].dtype == torch.float32
    fused.step()
    assert fused.state[model.weight]["step"].item() == 2


class FakeEvent:
    """torch.cuda.Event's timing calls, on the host clock."""
    made = 0

    def __init__(self) -> None:
        import time

        FakeEvent.made += 1
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: "FakeEvent") -> float:
        return (end.t - self.t) * 1000


def test_between_read_backs_the_loop_never_reads_a_device_value(monkeypatch, data_dir):
    steps, log_interval = 12, 6
    reads: list[int] = []  # the step during which the host read a tensor's value
    at = {"step": 0, "paused": False}

    def counted(name):
        real = getattr(torch.Tensor, name)

        def read(self, *a, **kw):
            if not at["paused"]:
                reads.append(at["step"])
            return real(self, *a, **kw)
        return read

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))

    def around(fn, step_starts=False):
        def wrapped(*a, **kw):
            if step_starts:
                at["step"] += 1
            paused, at["paused"] = at["paused"], True
            try:
                return fn(*a, **kw)
            finally:
                at["paused"] = paused
        return wrapped

    # forward_backward: once per step (its own reads would count: it is the loop's); the batch
    # drawing reads CPU generator values and the optimizers are not the loop (their maths is timed
    # on a GPU by benchmarks/gpu_check.py), so both are left out.
    real_fb = step_module.forward_backward
    monkeypatch.setattr(step_module, "forward_backward",
                        lambda *a, **kw: (at.__setitem__("step", at["step"] + 1), real_fb(*a, **kw))[1])
    monkeypatch.setattr(step_module, "step_optimizers", around(step_module.step_optimizers))
    monkeypatch.setattr(device_module, "get_batch", around(device_module.get_batch), raising=False)
    # The accelerator's path, with its CUDA calls replaced: pinning and events.
    monkeypatch.setattr(train_module, "is_async", lambda device: True, raising=False)
    monkeypatch.setattr(device_module, "is_async", lambda device: True, raising=False)
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(1) or self)
    monkeypatch.setattr(device_module.StepTimer, "_event", staticmethod(FakeEvent), raising=False)
    FakeEvent.made = 0

    result = run(TrainConfig(**TINY, steps=steps, log_interval=log_interval, data_dir=data_dir))
    assert result.status == "ok" and result.steps_done == steps
    logged = {1, log_interval, steps}
    during_steps = {s for s in reads if 1 <= s <= steps}
    assert during_steps <= logged, f"host reads at steps {sorted(during_steps - logged)}"
    assert len(pinned) == 2 * steps  # x and y of every step's batch, fetched once each
    assert FakeEvent.made == 2 * len(logged)  # one span per read-back, timed by events


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs its checks (minutes)")
def test_the_gpu_check_says_it_needs_cuda_and_exits_nonzero_on_a_cpu():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "gpu_check needs CUDA" in proc.stderr and "PASS" not in proc.stdout
