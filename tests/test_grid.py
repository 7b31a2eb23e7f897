"""Grid syntax: each form expands to the right values, each mistake stops with the key and the fix."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sweeper.grid.argv import prepare
from sweeper.grid.expand import GridError, expand, rewrite_override
from sweeper.grid.cells import plan
from sweeper.store import Store
from sweeper.grid.app_config import SweepAppConfig

CONF = Path(__file__).resolve().parent.parent / "conf"


def values(override):
    """The values one override sweeps, as the cells' override strings give them."""
    return [cell.overrides[0].split("=", 1)[1] for cell in expand([override])]


def test_doubling_progression_runs_from_a_to_b():
    assert values("width=128,...,4096") == ["128", "256", "512", "1024", "2048", "4096"]
    assert values("depth=4,...,4") == ["4"]


def test_colon_range_is_inclusive_with_integer_or_fractional_steps():
    assert values("lr=-10:-5") == ["-10", "-9", "-8", "-7", "-6", "-5"]
    assert values("lr=-10:-5:0.5") == ["-10", "-9.5", "-9", "-8.5", "-8", "-7.5", "-7", "-6.5",
                                       "-6", "-5.5", "-5"]
    assert values("lr=-10:-5:2") == ["-10", "-8", "-6"]
    assert values("seed=0:2") == ["0", "1", "2"]


def test_hydra_forms_still_work():
    assert values("seed=1,2,3") == ["1", "2", "3"]
    assert values("seed=range(0,3)") == ["0", "1", "2"]
    assert values("param=choice(sp,mup)") == ["sp", "mup"]
    assert values("width=64") == ["64"]


def test_cells_are_the_product_in_override_order_with_other_settings_on_each():
    cells = expand(["width=32,...,128", "lr=-10:-8", "depth=2", "experiment=smoke"])
    assert len(cells) == 9
    assert cells[0].overrides == ("width=32", "lr=-10", "depth=2", "experiment=smoke")
    assert [c.label() for c in cells[:4]] == [
        "width=32 lr=-10", "width=32 lr=-9", "width=32 lr=-8", "width=64 lr=-10"]


def test_a_later_value_of_a_key_replaces_the_earlier_grid():
    # an experiment's default params come first, the command line after
    cells = expand(["width=128,...,4096", "lr=-10:-5", "width=256,512"])
    assert len(cells) == 2 * 6
    assert {c.axes[0] for c in cells} == {("width", "256"), ("width", "512")}


@pytest.mark.parametrize("override, named, fix", [
    ("width=100,...,4096", "width=100,...,4096", "end it at 3200 or 6400"),
    ("width=128,...,4096,8192", "width=", "a,...,b"),
    ("width=x,...,64", "width=", "positive integers"),
    ("width=1,..,4", "'..' is not a value", "three dots"),
    ("lr=-5:-10", "lr=-5:-10", "write it as -10:-5"),
    ("lr=-10:-5:0", "lr=", "step must be positive"),
    ("lr=-10:x", "lr=-10:x", "a:b:s"),
    ("depth=2:6:0.5", "depth=", "integer start and step"),
    ("param=sp:mup", "param=", "param=a,b"),
    ("batch_size=8,16", "batch_size cannot be swept", "one value"),
    ("lr=interval(-10,-5)", "lr=interval", "discrete values"),
    ("lr=[1,2", "lr=[1,2", "cannot parse"),
])
def test_malformed_values_name_the_key_and_the_fix(override, named, fix):
    with pytest.raises(GridError) as err:
        expand([override])
    assert named in str(err.value) and fix in str(err.value)


def test_command_line_grid_forms_become_hydra_lists_only_on_sweep_axes():
    assert rewrite_override("lr=-10:-8") == "lr=-10,-9,-8"
    assert rewrite_override("width=32,...,128") == "width=32,64,128"
    assert rewrite_override("store=/mnt/a:b") == "store=/mnt/a:b"
    assert rewrite_override("hydra/launcher=submitit_local") == "hydra/launcher=submitit_local"


def test_a_mistyped_key_on_the_command_line_suggests_the_setting():
    known = set(SweepAppConfig.__dataclass_fields__) | {"experiment"}
    with pytest.raises(ValueError, match="unknown setting 'widht': did you mean 'width'"):
        prepare(["-m", "widht=32,64"], known)
    assert prepare(["-m", "lr=-9:-8", "hydra.verbose=true", "+x=1"], known) == [
        "-m", "lr=-9,-8", "hydra.verbose=true", "+x=1"]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("sweep", overrides=overrides)
    return cfg


@pytest.mark.parametrize("grid, message", [
    (["width=96,128"], "width=96 cannot be split into attention heads of 64"),
    (["param=sp,mu_p"], "unknown param='mu_p'"),
    (["optimizer=adamw,adam"], "unknown optimizer='adam'"),
])
def test_a_grid_that_cannot_train_stops_before_anything_runs(tmp_path, grid, message):
    with pytest.raises(GridError) as err:
        plan(expand(["experiment=smoke", *grid]), _compose, Store(tmp_path), force=False)
    text = str(err.value)
    assert message in text and "nothing was started" in text and "cells:" in text
    assert not any(tmp_path.iterdir())


WIDTHS = [128, 256, 512, 1024, 2048, 4096]
DEPTHS = [4, 8, 16, 32, 64, 128, 256]


@pytest.mark.parametrize("table, param, layernorm, sizes, lrs", [  # the paper's Tables 8-13
    (8, "sp", True, ("width", WIDTHS), range(-10, -4)),
    (9, "mup", True, ("width", WIDTHS), range(-10, -4)),
    (10, "sp", True, ("depth", DEPTHS), range(-9, -4)),
    (11, "mup", True, ("depth", DEPTHS), range(-9, -4)),
    (12, "sp", False, ("depth", DEPTHS), range(-13, -8)),
    (13, "mup", False, ("depth", DEPTHS), range(-11, -6)),
])
def test_each_paper_table_is_an_experiment_with_its_grid(table, param, layernorm, sizes, lrs):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("sweep", overrides=[f"experiment=paper_table{table}"], return_hydra_config=True)
    cells = expand(f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items())
    axis, size_values = sizes
    assert [(int(dict(c.axes)[axis]), int(dict(c.axes)["lr"])) for c in cells] == [
        (n, lr) for n in size_values for lr in lrs]
    assert (cfg.param, cfg.optimizer, cfg.layernorm) == (param, "muon_kimi", layernorm)
    assert (cfg.width, cfg.depth) == (256, 4)  # the base model along the axis not swept
    # D.3.1: batch 240 x 1024 tokens, 1221 steps, warmup 120, on OpenWebText
    assert (cfg.batch_size, cfg.seq_len, cfg.steps, cfg.warmup_steps, cfg.dataset) == (
        240, 1024, 1221, 120, "openwebtext")


@pytest.mark.parametrize("text", ["/plain/store", "it's", "C:\\stores\\a", "ends\\", "a\\'b", "sp ace,comma"])
def test_a_quoted_value_reads_back_through_hydra_as_it_was(text):
    # one quoting rule (the driver's store=, next's commands); Hydra's own parser reads it back
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from sweeper.grid.argv import hydra_quote

    (parsed,) = OverridesParser.create().parse_overrides([f"store={hydra_quote(text)}"])
    assert parsed.value() == text
