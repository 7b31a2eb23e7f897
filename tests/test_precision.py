"""precision: auto resolves by device alone (bf16 on CUDA, fp32 on every CPU, AMX or not); tf32 is
CUDA's; TF32 is on for a precision=tf32 run only, never left on for the process."""
from __future__ import annotations

import pytest
import torch

from trainer.config import resolve_precision
from trainer.precision import Precision


def test_auto_precision_depends_on_the_device_type_only():
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("fp32", "cuda") == "fp32"
    assert resolve_precision("tf32", "cuda") == "tf32"
    with pytest.raises(ValueError, match="tf32 needs CUDA"):
        resolve_precision("tf32", "cpu")


@pytest.mark.parametrize("precision, inside", [("fp32", False), ("bf16", False), ("tf32", True)])
def test_tf32_is_set_for_the_run_only(precision, inside):
    # Setting the flags needs no GPU; a torch.device("cuda") object is enough to take the CUDA path.
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
    before = [f.allow_tf32 for f in flags]
    try:
        for start in (True, False):
            for f in flags:
                f.allow_tf32 = start
            with Precision.of(precision, torch.device("cuda")).matmuls():
                assert [f.allow_tf32 for f in flags] == [inside, inside]
            assert [f.allow_tf32 for f in flags] == [start, start]
    finally:
        for f, value in zip(flags, before):
            f.allow_tf32 = value


def test_a_sweep_plans_auto_for_its_cells_device_and_tells_each_job():
    from sweeper.grid.expand import Cell
    from sweeper.grid.cells import PlannedCell, job_overrides, resolved_config
    from sweeper.store.schema import cell_key
    from trainer.config import TrainConfig

    on_gpus = resolved_config(TrainConfig(), "cuda")  # a launcher that gives each cell a GPU
    assert on_gpus.precision == "bf16"
    assert resolved_config(TrainConfig(device="cpu"), "cuda").precision == "fp32"  # the cell's own device wins
    assert resolved_config(TrainConfig(precision="fp32"), "cuda").precision == "fp32"
    assert resolved_config(TrainConfig(device="cpu"), None).precision == "fp32"
    cell = Cell(("width=64", "precision=auto"), (("width", "64"),))
    planned = PlannedCell(cell, on_gpus, cell_key(on_gpus.to_dict()), None)
    # the job composes the cell at the planned precision, so it computes the planned key on any node
    assert job_overrides(planned) == ["width=64", "precision=bf16", f"planned_cell={planned.key}"]
