"""Ingest: external CSV rows -> store records, all-or-nothing, keys apart from trained cells."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from analysis.ingest import IngestError, ingest
from sweeper.store.index import load_store
from sweeper.store.records import read_record, write_record
from sweeper.store.schema import make_record

HEADER = "width,depth,lr,param,optimizer,layernorm,val_loss,note\n"


def write_csv(path: Path, body: str, header: str = HEADER) -> Path:
    path.write_text(header + body)
    return path


def test_rows_become_records_with_status_experiment_and_extra_fields(tmp_path):
    csv = write_csv(tmp_path / "published.csv",
                    "128,4,-8,sp,muon_kimi,true,4.45,table 8\n128,4,-5,sp,muon_kimi,TRUE,nan,\n"
                    "256,4,-8,mup,adamw,false,4.081,x\n")
    records = ingest(csv, tmp_path / "store")
    frame = load_store(tmp_path / "store").set_index(["width", "lr"])
    assert len(frame) == 3 and set(frame["source"]) == {"ingest"} and set(frame["experiment"]) == {"published"}
    assert frame.loc[(128, -8.0), "status"] == "ok" and frame.loc[(128, -8.0), "val_loss"] == 4.45
    assert frame.loc[(128, -5.0), "status"] == "diverged" and math.isnan(frame.loc[(128, -5.0), "val_loss"])
    assert frame.loc[(256, -8.0), "layernorm"] == False  # noqa: E712 -- a bool column
    assert frame.loc[(256, -8.0), "optimizer"] == "adamw"
    full = read_record(tmp_path / "store", records[0]["key"])
    assert full["extra"] == {"note": "table 8"}
    assert ingest(csv, tmp_path / "store", experiment="other")[0]["experiment"] == "other"


def test_ingested_key_never_collides_with_a_trained_cell(tmp_path):
    store = tmp_path / "store"
    config = {"width": 128, "depth": 4, "lr": -8.0, "param": "sp", "optimizer": "muon_kimi", "layernorm": True}
    trained = make_record(config, "ok", experiment="mine", metrics={"val_loss": 4.0})
    write_record(store, trained)
    csv = write_csv(tmp_path / "paper.csv", "128,4,-8,sp,muon_kimi,true,4.45,\n")
    [ingested] = ingest(csv, store)
    [again] = ingest(csv, store, experiment="paper_v2")
    assert len({trained["key"], ingested["key"], again["key"]}) == 3
    assert read_record(store, trained["key"])["metrics"]["val_loss"] == 4.0  # untouched
    assert len(load_store(store)) == 3
    assert ingest(csv, store)[0]["key"] == ingested["key"]  # re-ingesting replaces, never duplicates
    assert len(load_store(store)) == 3


def test_bad_rows_are_all_reported_by_line_and_nothing_is_written(tmp_path):
    csv = write_csv(tmp_path / "bad.csv",
                    "128,4,-8,sp,muon_kimi,true,4.45,ok row\n"
                    "128,4,abc,sp,muon_kimi,true,4.4,\n"  # line 3
                    "128,4,-7,spp,muon_kimi,true,4.4,\n"  # line 4
                    "128.5,4,-6,sp,muon_kimi,maybe,4.4,\n"  # line 5: two problems
                    "128,4,-5,sp,muon_kimi,true,,\n"  # line 6
                    "128,4,-8,sp,muon_kimi,true,4.5,\n")  # line 7: same cell as line 2
    with pytest.raises(IngestError) as err:
        ingest(csv, tmp_path / "store")
    message = str(err.value)
    assert "6 bad row(s), nothing written" in message
    for expected in ("line 3: lr='abc' is not a number",
                     "line 4: param='spp' must be one of sp, mup, mup_k1",
                     "line 5: width='128.5' must be a positive integer",
                     "line 5: layernorm='maybe' must be true or false",
                     "line 6: val_loss is empty (write nan for a diverged run)",
                     "line 7: the same cell as line 2"):
        assert expected in message
    assert not (tmp_path / "store").exists()


def test_missing_column_names_the_column(tmp_path):
    csv = write_csv(tmp_path / "short.csv", "128,4,-8,sp,true,4.4\n", header="width,depth,lr,param,layernorm,val_loss\n")
    with pytest.raises(IngestError, match="line 1 lacks the column.s. optimizer"):
        ingest(csv, tmp_path / "store")
    with pytest.raises(IngestError, match="has a header but no rows"):
        ingest(write_csv(tmp_path / "empty.csv", ""), tmp_path / "store")
    with pytest.raises(IngestError, match="does not exist"):
        ingest(tmp_path / "nope.csv", tmp_path / "store")


def test_accepted_params_and_optimizers_are_the_trainers(tmp_path):
    from trainer.rules import OPTIMIZERS, PARAMS

    rows = "".join(f"128,4,-8,{param},{optimizer},true,4.4,x\n" for param in PARAMS for optimizer in OPTIMIZERS)
    records = ingest(write_csv(tmp_path / "all.csv", rows), tmp_path / "store")
    assert {(r["config"]["param"], r["config"]["optimizer"]) for r in records} == \
        {(p, o) for p in PARAMS for o in OPTIMIZERS}
    with pytest.raises(IngestError, match="optimizer.*must be one of"):
        ingest(write_csv(tmp_path / "bad.csv", "128,4,-8,mup,adam,true,4.4,x\n"), tmp_path / "other")


def test_seed_and_standard_error_columns_make_one_record_per_seed(tmp_path):
    header = "width,depth,lr,param,optimizer,layernorm,seed,val_loss,val_loss_se\n"
    csv = write_csv(tmp_path / "seeds.csv", "128,4,-8,mup,adamw,true,0,4.1,0.01\n"
                    "128,4,-8,mup,adamw,true,1,4.2,\n", header=header)
    ingest(csv, tmp_path / "store")
    frame = load_store(tmp_path / "store").set_index("seed")
    assert frame["val_loss"].to_dict() == {0: 4.1, 1: 4.2}
    assert frame.loc[0, "extra_val_loss_se"] == 0.01 and math.isnan(frame.loc[1, "extra_val_loss_se"])
    bad = write_csv(tmp_path / "bad.csv", "128,4,-8,mup,adamw,true,-1,4.1,0.01\n"
                    "128,4,-8,mup,adamw,true,2,4.1,-0.5\n128,4,-8,mup,adamw,true,3,4.1,\n"
                    "128,4,-8,mup,adamw,true,3,4.2,\n", header=header)
    with pytest.raises(IngestError) as err:
        ingest(bad, tmp_path / "store")
    for expected in ("line 2: seed='-1' must be an integer >= 0", "line 3: val_loss_se='-0.5' must be a finite "
                     "number >= 0", "line 5: the same cell as line 4"):
        assert expected in str(err.value)
