"""The memory model (trainer.cost.peak_memory) against the measured tensor peak of small CPU cells
(trainer.probe.measured_peak_bytes: torch's memory profiler over two real training steps): it must
never underestimate, across optimizers, micro batches, activation checkpointing, vocab sizes, a
chunked loss and bf16. The probe that confirms a micro batch on CUDA, with its CUDA calls replaced."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import trainer.cost as cost
import trainer.model as model_module
import trainer.probe as probe
from trainer.config import TrainConfig

CPU = torch.device("cpu")
BASE = TrainConfig(width=64, depth=1, batch_size=8, seq_len=32, optimizer="adamw", threads=1)


@pytest.mark.parametrize("change, vocab, micro, precision, chunk", [
    ({}, 256, 8, "fp32", None),
    ({}, 256, 2, "fp32", None),                                   # micro batches
    ({"depth": 3, "activation_checkpointing": True}, 256, 8, "fp32", None),
    ({}, 4096, 8, "fp32", None),                                  # a vocab whose logits dominate
    ({}, 4096, 8, "fp32", 2 ** 16),                               # the loss in chunks
    ({"optimizer": "sophia"}, 4096, 8, "fp32", 2 ** 16),          # its Hessian step is not chunked
    ({"optimizer": "muon_kimi", "depth": 2}, 256, 4, "bf16", None),
    ({"optimizer": "shampoo"}, 256, 8, "fp32", None),
])
def test_the_memory_model_never_underestimates_a_measured_cpu_step(monkeypatch, change, vocab, micro,
                                                                    precision, chunk):
    torch.set_num_threads(1)
    if chunk:  # the model's chunked cross-entropy, and the cost model's count of it, at a small size
        monkeypatch.setattr(model_module, "LOSS_CHUNK_ELEMENTS", chunk)
        monkeypatch.setattr(cost, "LOSS_CHUNK_ELEMENTS", chunk)
    cfg = replace(BASE, **change)
    measured = probe.measured_peak_bytes(cfg, vocab, CPU, precision, micro)
    estimate = cost.peak_memory(cfg, vocab, micro, precision, "cpu").total
    assert measured <= estimate, f"measured {measured / 2**20:.2f} MiB over the model's {estimate / 2**20:.2f}"
    assert measured > 0.5 * estimate  # and it is an estimate of this step, not a blanket bound


@pytest.fixture
def cuda_names(monkeypatch):
    """The probe's CUDA calls that name the device, replaced."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: type("P", (), {"total_memory": 2 ** 34}))
    monkeypatch.setattr(probe, "_CACHE", {})


def test_the_probe_steps_down_past_every_allocation_failure_and_frees_between_tries(monkeypatch, cuda_names):
    # Real steps on the CPU; the attention call fails above 2 rows as a cuBLAS allocation would.
    real_sdpa = model_module.F.scaled_dot_product_attention
    tried = []

    def sdpa(q, *a, **kw):
        if q.shape[0] > 2:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
        return real_sdpa(q, *a, **kw)

    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", sdpa)
    collected = []
    real_collect = probe.gc.collect
    monkeypatch.setattr(probe.gc, "collect", lambda *a: collected.append(1) or real_collect(*a))
    real_steps = probe.steps
    monkeypatch.setattr(probe, "steps", lambda cfg, vocab, device, precision, micro, n=2:
                        tried.append(micro) or real_steps(cfg, vocab, device, precision, micro, n))
    assert probe.confirmed_micro_batch(BASE, 256, CPU, "fp32", estimate=8) == 2
    assert tried == [8, 4, 2] and len(collected) == 3
    assert probe.confirmed_micro_batch(BASE, 256, CPU, "fp32", estimate=8) == 2 and tried == [8, 4, 2]  # cached

    def broken(q, *a, **kw):
        raise RuntimeError("shape mismatch")  # not an allocation failure: no stepping down past a bug

    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        probe.confirmed_micro_batch(replace(BASE, width=128), 256, CPU, "fp32", estimate=8)


def test_the_probe_cache_tells_compiled_from_eager(cuda_names):
    assert probe._shape_key(BASE, 256, CPU, "fp32") != probe._shape_key(replace(BASE, compile=True), 256, CPU, "fp32")
    assert probe.is_allocation_failure(RuntimeError("cusolver error: CUSOLVER_STATUS_ALLOC_FAILED"))
    assert probe.is_allocation_failure(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not probe.is_allocation_failure(RuntimeError("expected scalar type Float"))
