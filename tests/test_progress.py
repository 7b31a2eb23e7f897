"""The sweep's time left weights the cells still to run by their compute, not by their number."""
import io

from sweeper.progress import Progress, config_cost
from trainer.config import TrainConfig


def test_time_left_weights_cells_by_tokens_times_parameters():
    small, big = TrainConfig(width=32, depth=2), TrainConfig(width=256, depth=2)
    assert config_cost(big) == 64 * config_cost(small)
    assert config_cost(TrainConfig(width=32, depth=2, steps=400)) == 2 * config_cost(small)  # 200 steps
    clock = iter([0.0, 10.0, 20.0])  # started; the small cells end at 10 s and at 20 s
    out = io.StringIO()
    costs = {"a": config_cost(small), "b": config_cost(small), "c": config_cost(big)}
    progress = Progress(costs, out, now=lambda: next(clock))
    progress.add("a", "ok")
    progress.add("b", "diverged")
    first, second = out.getvalue().splitlines()
    assert first.endswith("| elapsed 0:00:10 | ~0:10:50 left")  # 10 s per small cell, 1 + 64 of them to go
    assert second == "[sweep] 2/3 cells finished: 1 ok, 1 diverged, 0 failed | elapsed 0:00:20 | ~0:10:40 left"
