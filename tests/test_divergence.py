"""What stops a run as diverged: in the paper presets only a non-finite loss, elsewhere also a
loss above divergence_factor x the first one (cheap early stopping on CPU)."""
from __future__ import annotations

import math

import pytest

from sweeper.grid.experiments import compose_sweep, sweep_settings
from trainer.config import TrainConfig
from trainer.train import is_diverged


def test_factor_zero_stops_only_on_a_non_finite_loss():
    paper, cpu = TrainConfig(divergence_factor=0), TrainConfig()
    assert not is_diverged(345.0, 10.9, paper)  # Table 13's finite 345 ends as a finite cell
    assert is_diverged(345.0, 10.9, cpu)
    for loss in (math.nan, math.inf):
        assert is_diverged(loss, 10.9, paper) and is_diverged(loss, 10.9, cpu)


@pytest.mark.parametrize("experiment, factor", [("paper_table12", 0), ("paper_table8", 0), ("cpu_depth", 2.0)])
def test_paper_presets_run_to_the_end_and_cpu_presets_stop_early(experiment, factor):
    assert sweep_settings(compose_sweep(experiment))["divergence_factor"] == factor


def test_a_factor_below_one_is_refused():
    with pytest.raises(ValueError, match="divergence_factor=0.5 would stop every run"):
        TrainConfig(divergence_factor=0.5).validate()


def test_the_device_side_check_keeps_a_spike_between_read_backs():
    # CUDA steps between log points or-in this flag instead of reading the loss back (no host sync)
    import torch

    from trainer.train import device_divergence

    cfg = TrainConfig()
    pending = None
    for loss in (3.0, 7.0, 3.0):  # 7 > 2 x 3 at the middle step only
        pending = device_divergence(torch.tensor(loss), pending, 3.0, cfg)
    assert pending.item()
    assert not device_divergence(torch.tensor(7.0), None, 3.0, TrainConfig(divergence_factor=0)).item()
    assert device_divergence(torch.tensor(math.nan), None, None, cfg).item()
