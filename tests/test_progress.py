"""The sweep's time left counts the compute of the cells still to run (tokens x non-embedding
parameters) and each cell's fixed start, both fitted to the progress so far."""
import io

from sweeper.progress import Progress, config_cost
from trainer.config import TrainConfig


def test_time_left_weights_cells_by_compute_plus_a_fixed_start():
    small, big = TrainConfig(width=32, depth=2), TrainConfig(width=256, depth=2)
    assert config_cost(big) == 64 * config_cost(small)
    assert config_cost(TrainConfig(width=32, depth=2, steps=400)) == 2 * config_cost(small)  # 200 steps
    # Every cell takes 5 s to start plus 1 s per small cell's compute: 6 s, 6 s, then 69 s.
    clock = iter([0.0, 6.0, 12.0, 81.0])
    out = io.StringIO()
    costs = {"a": config_cost(small), "b": config_cost(small), "c": config_cost(big), "d": config_cost(big)}
    progress = Progress(costs, out, now=lambda: next(clock))
    for key in "abc":
        progress.add(key, "ok")
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("[sweep] 2/4 cells finished: 2 ok, 0 diverged, 0 failed | elapsed 0:00:12 | ~")
    assert lines[2] == "[sweep] 3/4 cells finished: 3 ok, 0 diverged, 0 failed | elapsed 0:01:21 | ~0:01:09 left"
