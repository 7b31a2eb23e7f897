"""The cost model (trainer.cost) and ``python -m sweeper plan``."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from sweeper.__main__ import main as sweeper_main
from trainer.config import TrainConfig
from trainer.cost import FILL, divisors, fit_advice, gpu_named, params, peak_memory, pick_micro_batch
from trainer.microbatch import resolve_micro_batch
from trainer.parameterization import build_model


@pytest.mark.parametrize("layernorm", [True, False])
def test_parameter_counts_are_the_models(layernorm):
    cfg = TrainConfig(width=128, depth=3, seq_len=64, layernorm=layernorm)
    model = build_model(cfg, 300)
    counted = params(cfg, 300)
    assert counted.total == sum(p.numel() for p in model.parameters())
    assert counted.embedding == model.wte.weight.numel() + model.wpe.weight.numel()
    assert sum(r * c for r, c in counted.hidden_matrices) == sum(
        p.numel() for n, p in model.named_parameters() if n.startswith("h.") and p.ndim == 2)


def test_the_micro_batch_is_the_largest_divisor_that_fits():
    cfg = TrainConfig(width=512, depth=8, batch_size=24, seq_len=1024)
    need = {d: peak_memory(cfg, 50304, d, "bf16").total for d in divisors(24)}
    assert all(need[a] < need[b] for a, b in zip(divisors(24), divisors(24)[1:]))
    assert pick_micro_batch(cfg, 50304, "bf16", need[24] / FILL) == 24
    assert pick_micro_batch(cfg, 50304, "bf16", need[24] / FILL - 1) == 12
    assert pick_micro_batch(cfg, 50304, "bf16", need[1] / FILL - 1) is None
    # checkpointing keeps one block's activations: a cell too deep for micro batch 1 fits with it
    deep = replace(cfg, depth=512)
    small = peak_memory(replace(deep, activation_checkpointing=True), 50304, 1, "bf16").total / FILL
    assert pick_micro_batch(deep, 50304, "bf16", small) is None
    assert fit_advice(deep, 50304, "bf16", small) == "activation_checkpointing=true"
    assert "GB" in fit_advice(deep, 50304, "bf16", small / 4)


def test_auto_on_a_cpu_takes_the_whole_batch_unless_it_exceeds_the_machine():
    cfg = TrainConfig(width=64, depth=2, batch_size=16, seq_len=64)
    assert resolve_micro_batch(cfg, 256, torch.device("cpu"), "fp32") == 16
    huge = replace(cfg, width=2048, depth=64, batch_size=2048, seq_len=4096)  # TBs of activations
    assert resolve_micro_batch(huge, 256, torch.device("cpu"), "fp32") < 2048
    assert resolve_micro_batch(replace(cfg, micro_batch_size=4), 256, torch.device("cpu"), "fp32") == 4


def test_plan_json_prices_every_cell_of_the_grid(capsys):
    assert sweeper_main(["plan", "experiment=paper_table9", "width=256,4096", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {"cells", "total_gpu_hours"} <= set(plan)
    assert [(c["width"], c["lr"]) for c in plan["cells"]] == [(w, lr) for w in (256, 4096) for lr in range(-10, -4)]
    for cell in plan["cells"]:
        assert {"width", "depth", "lr", "params", "flops", "micro_batch_size", "peak_memory_gb", "hours"} <= set(cell)
        assert 240 % cell["micro_batch_size"] == 0 and cell["peak_memory_gb"] <= 80 * FILL
    small, big = plan["cells"][0], plan["cells"][-1]
    assert big["flops"] > 10 * small["flops"] and big["hours"] > 10 * small["hours"]
    assert big["micro_batch_size"] < small["micro_batch_size"]
    assert plan["total_gpu_hours"] == pytest.approx(sum(c["hours"] for c in plan["cells"]))


def test_plan_names_a_cell_that_cannot_fit_and_what_would_fit_it(capsys):
    assert sweeper_main(["plan", "experiment=paper_table13", "depth=256", "lr=-8",
                         "--gpu-memory-gb", "8", "--gpu-tflops", "100"]) == 0
    out = capsys.readouterr().out
    assert "does not fit even at micro batch 1: needs activation_checkpointing=true" in out
    assert "1 cells do not fit" in out
    assert sweeper_main(["plan", "experiment=paper_table13", "depth=256", "lr=-8", "activation_checkpointing=true",
                         "--gpu-memory-gb", "8", "--gpu-tflops", "100"]) == 0
    assert "every cell fits" in capsys.readouterr().out


@pytest.mark.parametrize("name, memory_gib, entry", [
    ("NVIDIA H100 80GB HBM3", 79.1, "H100"),
    ("NVIDIA H200", 139.8, "H200"),
    ("NVIDIA A100-SXM4-40GB", 39.4, "A100-40GB"),
    ("NVIDIA A100-SXM4-80GB", 79.2, "A100-80GB"),
    ("NVIDIA A100 80GB PCIe", 79.2, "A100-80GB"),
    ("NVIDIA GeForce RTX 4090", 23.6, None),
])
def test_a_gpu_is_found_by_the_name_torch_gives_it(name, memory_gib, entry):
    assert gpu_named(name, memory_gib) == entry
