"""Micro-batching, chunked cross-entropy and activation checkpointing: the same step as one batch."""
from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from trainer.config import TrainConfig
from trainer.optim.build import StepInputs, build_optimizers
from trainer.parameterization import build_model, param_groups
from trainer.train import run

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


TINY = dict(width=32, depth=2, head_dim=16, batch_size=16, seq_len=32, steps=4, warmup_steps=1,
            eval_interval=0, eval_batches=1, log_interval=1, threads=1, lr=-7, precision="fp32",
            checkpoint_interval=4)


def _trained(tmp_path, micro: int, **overrides):
    run_dir = tmp_path / f"micro{micro}"
    cfg = TrainConfig(**{**TINY, "micro_batch_size": micro, "run_dir": str(run_dir), **overrides})
    result = run(cfg)
    return result, torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.parametrize("optimizer", ["adamw", "muon_kimi"])
def test_four_micro_batches_of_four_step_as_one_batch_of_sixteen(tmp_path, data_dir, optimizer):
    # precision=fp32 runs Newton-Schulz in fp32 on every CPU (a bf16 iteration would round the two
    # gradients' last-bit differences into step-sized ones, no part of what is checked here)
    settings = dict(optimizer=optimizer, data_dir=data_dir)
    whole, whole_params = _trained(tmp_path, 16, **settings)
    parts, parts_params = _trained(tmp_path, 4, **settings)
    assert [s for s, _ in parts.curves["train"]] == [1, 2, 3, 4]
    assert [l for _, l in parts.curves["train"]] == pytest.approx([l for _, l in whole.curves["train"]],
                                                                   rel=1e-5)
    assert parts.tokens == whole.tokens == 4 * 16 * 32  # tokens counted once per step
    assert parts.val_loss == pytest.approx(whole.val_loss, rel=1e-5)
    for name, value in whole_params.items():
        if name.endswith("attn.k.bias"):
            # softmax ignores a shift of every score: this gradient is 0 but for rounding, which
            # Adam's tiny eps (1e-16) scales up to full steps; no summation order could match it
            continue
        torch.testing.assert_close(parts_params[name], value, rtol=1e-4, atol=1e-6, msg=lambda m: name + m)
    start = build_model(TrainConfig(**TINY), whole_params["wte.weight"].shape[0],
                        torch.Generator().manual_seed(0)).state_dict()
    assert max((whole_params[n] - p).abs().max().item() for n, p in start.items()) > 1e-3  # it trained


def test_sophias_hessian_estimate_is_the_same_in_micro_batches():
    # The optimizer step seam (StepInputs) carries the micro batch to Sophia's extra forward/backward.
    cfg = TrainConfig(**{**TINY, "optimizer": "sophia"})
    model = build_model(cfg, 97, torch.Generator().manual_seed(0))
    sophia = [o for o in build_optimizers(param_groups(model, cfg), cfg) if hasattr(o, "prepare_step")][0]
    x = torch.randint(0, 97, (16, 32), generator=torch.Generator().manual_seed(1))
    estimates = []
    for micro in (None, 4):
        sophia.prepare_step(StepInputs(model, x, nullcontext, micro))
        estimates.append(sophia.hessian)
    assert max(h.abs().max().item() for h in estimates[0]) > 0
    for whole, parts in zip(*estimates):
        torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-9)


def test_a_micro_batch_that_does_not_divide_the_batch_names_the_ones_that_do():
    with pytest.raises(ValueError, match=r"micro_batch_size=5 does not divide batch_size=12: use one of "
                                         r"\[1, 2, 3, 4, 6, 12\]"):
        TrainConfig(batch_size=12, micro_batch_size=5).validate()


def _model(**overrides):
    cfg = TrainConfig(**{**TINY, **overrides})
    return build_model(cfg, 97, torch.Generator().manual_seed(0))


def _grads(model, x):
    model.zero_grad()
    loss = model.loss(x, x.roll(1, dims=1))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _plain_grads(model, x, autocast=nullcontext):
    """Value and gradients of the textbook loss: full logits, then F.cross_entropy on them in fp32."""
    model.zero_grad()
    with autocast():
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x.roll(1, dims=1).flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunk_rows", [None, 40])  # one chunk; 40-row chunks of 128 rows
def test_the_loss_has_the_plain_value_and_gradient(monkeypatch, chunk_rows):
    model = _model(width=64, depth=2, base_width=32, base_depth=1)  # multipliers 1/2 and 1/2, not 1
    x = torch.randint(0, 97, (4, 32), generator=torch.Generator().manual_seed(1))
    plain_loss, plain = _plain_grads(model, x)
    if chunk_rows:
        monkeypatch.setattr("trainer.model.LOSS_CHUNK_ELEMENTS", 97 * chunk_rows)
    loss, grads = _grads(model, x)
    torch.testing.assert_close(loss, plain_loss)
    for name in plain:
        torch.testing.assert_close(grads[name], plain[name], msg=name)
    with torch.no_grad():
        torch.testing.assert_close(model.loss(x, x.roll(1, dims=1)), plain_loss)


def test_the_loss_under_bf16_autocast_has_the_plain_value_and_gradient(monkeypatch):
    # bf16 matmuls (the logits' and both gradient products), fp32 softmax, as autocast's linear
    model = _model()
    x = torch.randint(0, 97, (4, 32), generator=torch.Generator().manual_seed(1))
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    plain_loss, plain = _plain_grads(model, x, bf16)
    fp32_loss, fp32 = _plain_grads(model, x)
    monkeypatch.setattr("trainer.model.LOSS_CHUNK_ELEMENTS", 97 * 40)
    model.zero_grad()
    with bf16():
        loss = model.loss(x, x.roll(1, dims=1))
    loss.backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, plain_loss, rtol=2e-3, atol=0)
    for name, p in model.named_parameters():
        # as close to autocast's own gradient as bf16 rounding allows, closer than to fp32's
        err, bf16_vs_fp32 = (p.grad - plain[name]).norm(), (plain[name] - fp32[name]).norm()
        assert err <= 1.5 * bf16_vs_fp32 + 1e-6, name


def test_the_chunked_loss_runs_the_output_layer_three_times_not_four(monkeypatch):
    # Forward, dL/dx and dL/dW per chunk: none recomputed in backward (4 chunks: 12 products, not 16).
    model = _model()
    x = torch.randint(0, 97, (4, 32), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr("trainer.model.LOSS_CHUNK_ELEMENTS", 97 * 32)  # 32-row chunks of 128 rows
    with torch.profiler.profile(record_shapes=True) as prof:
        model.loss(x, x.roll(1, dims=1)).backward()
    products = [e for e in prof.events() if e.name in ("aten::mm", "aten::addmm", "aten::addmm_")
                and any(97 in shape for shape in e.input_shapes if isinstance(shape, list))]
    assert len(products) == 12


def test_activation_checkpointing_gives_the_same_gradients():
    model = _model(depth=3)
    x = torch.randint(0, 97, (4, 32), generator=torch.Generator().manual_seed(2))
    plain_loss, plain = _grads(model, x)
    model.activation_checkpointing = True
    ckpt_loss, ckpt = _grads(model, x)
    assert torch.equal(ckpt_loss, plain_loss)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=0, atol=0, msg=name)


def test_evaluation_runs_in_the_training_micro_batches(data_dir, monkeypatch):
    # an eval pass over the whole batch would need the memory that made the step micro-batch
    from trainer.model import GPT

    rows, real = [], GPT.loss
    monkeypatch.setattr(GPT, "loss", lambda self, idx, targets: (rows.append(idx.shape[0]) if not self.training
                                                                 else None) or real(self, idx, targets))
    run(TrainConfig(**{**TINY, "micro_batch_size": 4, "eval_batches": 2, "checkpoint_interval": 0,
                       "data_dir": data_dir}))
    assert rows == [4] * (2 * 16 // 4)
