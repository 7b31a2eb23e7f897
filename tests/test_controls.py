"""The CPU presets' controls (issue 19): SP and muP share their base shape, heads keep one size as
the width grows, and the attention scale is a setting that keeps old keys at its default."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from sweeper.grid.experiments import compose_sweep, sweep_settings
from sweeper.grid.expand import grid_values
from sweeper.store.schema import cell_key, migrate
from trainer.config import TrainConfig
from trainer.parameterization import build_model, multipliers


def preset(name: str) -> tuple[TrainConfig, dict]:
    """The experiment's trainer settings and its swept axes, as a sweep composes them."""
    composed = compose_sweep(name)
    axes = {axis: [int(v) for v in grid_values(axis, str(value)) or str(value).split(",")]
            for axis, value in composed.hydra.sweeper.params.items() if axis != "lr"}
    settings = {k: v for k, v in sweep_settings(composed).items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**settings), axes


@pytest.mark.parametrize("name, axis", [("cpu_width", "width"), ("cpu_depth", "depth")])
def test_cpu_presets_keep_the_head_size_and_scale_the_number_of_heads(name, axis):
    cfg, axes = preset(name)
    cells = [dataclasses.replace(cfg, **{axis: size}) for size in axes[axis]]
    assert {c.width // c.n_head() for c in cells} == {cfg.head_dim}
    assert [c.n_head() for c in cells] == [c.width // cfg.head_dim for c in cells]


def test_cpu_width_runs_sp_and_mup_at_their_shared_base_depth():
    cfg, axes = preset("cpu_width")
    assert cfg.base_depth == cfg.depth and "depth" not in axes
    smallest = dataclasses.replace(cfg, width=min(axes["width"]))
    assert smallest.width == smallest.base_width
    for param in ("sp", "mup"):  # the same model at the base shape: every multiplier 1
        assert multipliers(dataclasses.replace(smallest, param=param)) == multipliers(
            dataclasses.replace(smallest, param="sp")) and multipliers(smallest).block == 1


def attention_by_hand(model, x: torch.Tensor, scale: float) -> torch.Tensor:
    attn = model.h[0].attn
    B, T, C = x.shape
    heads = attn.n_head
    q, k, v = (layer(x).view(B, T, heads, C // heads).transpose(1, 2) for layer in (attn.q, attn.k, attn.v))
    scores = (q @ k.transpose(-2, -1)) * scale
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = F.softmax(scores, dim=-1) @ v
    return attn.proj(y.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("setting, power", [("inv_sqrt_d", 0.5), ("inv_d", 1.0)])
def test_attention_scale_divides_the_logits_by_the_head_size_or_its_root(setting, power):
    cfg = TrainConfig(width=64, depth=1, head_dim=16, seq_len=8, attention_scale=setting)
    model = build_model(cfg, 32, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in model.h[0].attn.parameters():  # large weights: the scale visibly matters
            p.normal_(0, 1, generator=torch.Generator().manual_seed(p.numel()))
        x = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(1))
        ours = model.h[0].attn(x)
        assert torch.allclose(ours, attention_by_hand(model, x, 16 ** -power), atol=1e-5)
        assert not torch.allclose(ours, attention_by_hand(model, x, 16 ** -(1.5 - power)), atol=1e-3)


def test_attention_scale_enters_a_key_only_away_from_its_default_and_old_records_read_it():
    settings = TrainConfig(width=64, depth=2).to_dict()
    before = {k: v for k, v in settings.items() if k != "attention_scale"}  # a config written before it existed
    assert cell_key(settings) == cell_key(before)
    assert cell_key({**settings, "attention_scale": "inv_d"}) != cell_key(before)
    old = {"schema_version": 1, "config": before, "status": "ok", "source": "trainer"}
    assert migrate(old)["config"]["attention_scale"] == "inv_sqrt_d"


def test_an_unknown_attention_scale_names_the_choices():
    with pytest.raises(ValueError, match="attention_scale='sqrt': choose inv_sqrt_d or inv_d"):
        TrainConfig(attention_scale="sqrt").validate()
