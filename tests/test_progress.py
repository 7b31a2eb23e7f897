"""The sweep's time left counts the compute of the cells still to run (tokens x non-embedding
parameters) and each cell's fixed start, both fitted to the progress so far."""
import io

from sweeper.jobs.progress import Progress
from trainer.cost import cell_relative_compute
from trainer.config import TrainConfig


def test_time_left_weights_cells_by_compute_plus_a_fixed_start():
    small, big = TrainConfig(width=32, depth=2), TrainConfig(width=256, depth=2)
    assert cell_relative_compute(big) == 64 * cell_relative_compute(small)
    assert cell_relative_compute(TrainConfig(width=32, depth=2, steps=400)) == 2 * cell_relative_compute(small)  # 200 steps
    # Every cell takes 5 s to start plus 1 s per small cell's compute: 6 s, 6 s, then 69 s.
    clock = iter([0.0, 6.0, 12.0, 81.0])
    out = io.StringIO()
    costs = {"a": cell_relative_compute(small), "b": cell_relative_compute(small), "c": cell_relative_compute(big), "d": cell_relative_compute(big)}
    progress = Progress(costs, out, now=lambda: next(clock))
    for key in "abc":
        progress.add(key, "ok")
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("[sweep] 2/4 cells finished: 2 ok, 0 diverged, 0 failed | elapsed 0:00:12 | ~")
    assert lines[2] == "[sweep] 3/4 cells finished: 3 ok, 0 diverged, 0 failed | elapsed 0:01:21 | ~0:01:09 left"
