"""One cell's job: train it (resuming from its run dir) and store exactly one record.

``run_cell`` is plain Python (config in, record written); ``hydra_job`` is the edge that the sweep
app's task function calls with the composed Hydra config of the cell.
"""
from __future__ import annotations

import dataclasses
import os
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from trainer.callbacks import Callback
from trainer.config import TrainConfig
from trainer.logs import TAIL_LINES, log_tail

from sweeper.store import RecordWriteError, Store, StoreError
from sweeper.store.schema import DONE, cell_key, make_record, result_config
from sweeper.grid.app_config import trainer_values

if TYPE_CHECKING:  # torch: imported only where a cell really trains
    from trainer.distributed import Ranks


class CellFailed(RuntimeError):
    """Raised by a Slurm job after it recorded its cell as failed: the job then exits with an error,
    so Slurm's accounting says FAILED as the record does."""


class PlanChanged(RuntimeError):
    """A job whose config is not the cell its sweep planned: it trains nothing, and the sweep records
    the planned cell as failed with this message."""


class NotLaunched(RuntimeError):
    """A job the launcher never started: the store had failed to record an earlier cell, and every
    later cell would train only to fail the same way."""


class JobLostError(RuntimeError):
    """A job that ended without writing its cell's record (cancelled, killed for memory, its node
    lost): the submitting side records the cell as failed with what the scheduler says."""

    def __init__(self, message: str, *, slurm_state: Optional[str] = None,
                 job_id: Optional[str] = None, log_tail: str = "") -> None:
        super().__init__(message)
        self.slurm_state = slurm_state
        self.job_id = job_id
        self.log_tail = log_tail


def record_from_result(result: dict, *, experiment: Optional[str], slurm: Optional[dict]) -> dict:
    """A store record from ``trainer.train.Result.to_dict()``."""
    return make_record(
        result["config"],
        result["status"],
        experiment=experiment,
        metrics={k: result.get(k) for k in ("val_loss", "train_loss", "steps_done", "tokens")},
        curves=result.get("curves"),
        timings={"wall_time_s": result.get("wall_time_s"), "tokens_per_s": result.get("tokens_per_s")},
        runtime={"device": result.get("device"), "precision": result.get("precision"),
                 "versions": result.get("versions") or {}, "slurm": slurm},
        # Not (yet) one of the record schema's metrics, so in extra: the store's column extra_val_loss_se.
        extra={"val_loss_se": result.get("val_loss_se")},
    )


def error_info(err: BaseException, job_id: Optional[str] = None) -> dict:
    """The record's error: for a lost job, the scheduler's state and the job log's tail; for an
    exception the cell raised, its traceback, and in a Slurm job the state FAILED that the job
    ends in (run_cell raises CellFailed after recording)."""
    if isinstance(err, JobLostError):
        return {"type": type(err).__name__, "message": str(err), "log_tail": err.log_tail,
                "slurm_state": err.slurm_state, "job_id": err.job_id or job_id}
    lines = "".join(traceback.format_exception(err)).rstrip().splitlines()
    return {"type": type(err).__name__, "message": str(err),
            "log_tail": "\n".join(lines[-TAIL_LINES:]),
            "slurm_state": "FAILED" if job_id else None, "job_id": job_id}


def failed_record(config: dict, err: BaseException, *, experiment: Optional[str],
                  wall_time_s: Optional[float] = None, slurm: Optional[dict] = None) -> dict:
    if slurm is None and isinstance(err, JobLostError) and err.job_id:
        slurm = {"job_id": err.job_id}
    return make_record(
        config, "failed", experiment=experiment,
        timings={"wall_time_s": wall_time_s},
        runtime={"slurm": slurm},
        error=error_info(err, job_id=(slurm or {}).get("job_id")),
    )


def describe(record: dict) -> str:
    """One line for logs: what the cell is and how it ended."""
    cfg = record["config"]
    head = (f"cell {record['key']} width={cfg['width']} depth={cfg['depth']} lr={cfg['lr']:g} "
            f"{cfg['param']}/{cfg['optimizer']}")
    wall = record["timings"].get("wall_time_s")
    took = f" in {wall:.1f}s" if wall is not None else ""
    if record["status"] == "failed":
        return f"{head}: FAILED{took}: {record['error']['type']}: {record['error']['message']}"
    loss = record["metrics"].get("val_loss")
    return f"{head}: {record['status']}" + (f" val_loss={loss:.4f}" if loss is not None else "") + took


def run_label(config: TrainConfig, key: str) -> str:
    """A cell's run name: its settings, as a person scans a run list (``mup adamw w128 d2 lr-4 s0``),
    then its key's first 8 digits, so two cells that differ only in another setting never share
    (and a requeued job resumes) the same run."""
    lr = f"{config.lr:g}"
    parts = [config.param, config.optimizer, f"w{config.width}", f"d{config.depth}", f"lr{lr}",
             f"s{config.seed}", *([] if config.layernorm else ["noln"]), key[:8]]
    return " ".join(parts)


def tracker_names(config: TrainConfig, store: Path, key: str, experiment: Optional[str]) -> dict:
    """How a cell shows in TensorBoard or W&B (trainer.tracking): its settings name the run
    (run_label); its experiment and store name the group and project (unless set), so the cells
    of one table sit together; event files go under STORE/tb/<run name>."""
    return {"run_name": run_label(config, key), "run_group": config.run_group or experiment,
            "project": config.project or store.name, "tb_dir": config.tb_dir or str(store / "tb")}


def run_cell(config: TrainConfig, store: Path, *, experiment: Optional[str] = None,
             slurm: Optional[dict] = None, keep_checkpoint: bool = False,
             force: bool = False, callbacks: Sequence[Callback] = (),
             ranks: Optional["Ranks"] = None) -> Optional[dict]:
    """Trains one cell and writes its record (``failed`` when training raises); returns the record,
    or None when another run is training the cell (its claim, Store.claim, is live).
    ``callbacks`` watch its training (trainer.callbacks), beside the tracker its config names.

    The run dir is ``STORE/runs/<key>``, so a rerun or a requeued job resumes from its checkpoint.
    A cell whose record turned ok or diverged since the sweep planned it (another sweep trained it)
    is not trained again unless ``force``. A stop signal (SystemExit from the trainer after it
    checkpoints) is not a failure: it passes. On Slurm the cell's queue entry is rewritten first,
    so status finds the job (Store.note_queued), and a failed cell raises CellFailed once recorded, so
    that the job ends FAILED. A record the store cannot write raises RecordWriteError: the cell is
    not finished (its attempt, where written, becomes the record later: Store.promote). A
    finished cell's checkpoint goes once its record is written, unless ``keep_checkpoint``.
    With ``ranks`` (rank 0 of a cell whose ranks are the job's tasks), the other ranks train beside
    it (``follow_cell``) and are told when it does not train."""
    key, cells = cell_key(config.to_dict()), Store(store)
    held, owner = cells.claim(key, job_id=(slurm or {}).get("job_id"), experiment=experiment,
                              config=result_config(config.to_dict()))
    if held is None:
        print(f"cell {key}: not trained here, {owner.owner() if owner else 'another run'} "
              f"is training it", flush=True)
        _dismiss(config, ranks)
        return None
    with held:
        if not force:
            try:
                earlier = cells.result(key)
                if earlier["status"] in DONE:
                    print(f"cell {key}: already {earlier['status']} in the store", flush=True)
                    _dismiss(config, ranks)
                    return earlier
            except StoreError:
                pass
        if slurm is not None:
            cells.note_queued(key, job_id=slurm["job_id"], experiment=experiment,
                              config=config.to_dict(), written_by="job")
        config = dataclasses.replace(config, run_dir=str(cells.run_dir(key)),
                                     **tracker_names(config, store, key, experiment))
        if keep_checkpoint:
            cells.keep_checkpoint(key)
        started = time.perf_counter()
        try:
            from trainer.train import run  # torch: imported only where a cell really trains

            record = record_from_result(run(config, callbacks, ranks).to_dict(), experiment=experiment,
                                        slurm=slurm)
        except Exception as err:  # any failure of the cell is recorded; the sweep goes on
            err = with_rank_logs(err) if slurm is not None else err
            record = failed_record(config.to_dict(), err, experiment=experiment, slurm=slurm,
                                   wall_time_s=time.perf_counter() - started)
        try:
            cells.finish(record)
        except RecordWriteError as err:  # not finished: the job fails, its checkpoint stays
            print(f"{describe(record)}; NOT RECORDED: {err}", flush=True)
            raise
        line = describe(record)
        if record["status"] not in DONE:  # a finished record always becomes the cell's result
            kept = cells.result(key)
            if kept["status"] != record["status"]:
                line += f" (the cell keeps its earlier {kept['status']} result; status lists its attempts)"
        print(line, flush=True)
        if record["status"] != "failed" and not keep_checkpoint:
            cells.drop_checkpoint(key)
    if slurm is not None and record["status"] == "failed":
        raise CellFailed(line)
    return record


def _dismiss(config: TrainConfig, ranks: Optional["Ranks"]) -> None:
    if ranks is not None:
        from trainer.train import dismiss

        dismiss(config, ranks)


def follow_cell(config: TrainConfig, store: Path, ranks: "Ranks") -> None:
    """A rank other than 0 of a cell: trains beside rank 0, which claims the cell and writes its
    checkpoint and record; this one writes nothing but its log (its errors fail its task)."""
    from trainer.train import run

    run(dataclasses.replace(config, run_dir=str(Store(store).run_dir(cell_key(config.to_dict()))),
                            logger="none"), ranks=ranks)


def with_rank_logs(err: BaseException) -> BaseException:
    """In a Slurm job, a lost rank's error (trainer.distributed.RankLost) with the path and the last
    lines of each lost rank's task log; any other error as it is."""
    lost = getattr(err, "lost", None)
    if not lost:
        return err
    from submitit import JobEnvironment
    from submitit.core.utils import JobPaths


    env = JobEnvironment()
    parts = [str(err)]
    for rank in lost:
        path = JobPaths(env.paths.folder, job_id=env.job_id, task_id=rank).stderr
        parts.append(f"rank {rank}'s log {path} ends:\n{log_tail(path)}")
    return type(err)("\n".join(parts), lost)


def job_ranks(environ: dict) -> Optional["Ranks"]:
    """This task's rank of its cell where a Slurm job runs the cell's ranks as its tasks (a cluster
    profile with gpus_per_cell or nodes_per_cell above 1), from submitit's distributed environment
    (the rendezvous on the job's first node, a port drawn from the job id); None for one task."""
    if environ.get("SUBMITIT_EXECUTOR") != "slurm" or int(environ.get("SLURM_NTASKS", "1")) == 1:
        return None
    from submitit.helpers import TorchDistributedEnvironment

    from trainer.distributed import Ranks

    env = TorchDistributedEnvironment()
    return Ranks(env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port)


def slurm_info(environ: dict) -> Optional[dict]:
    """Where a Slurm job ran, from its environment; None outside Slurm."""
    if "SLURM_JOB_ID" not in environ:
        return None
    return {
        "job_id": environ.get("SLURM_ARRAY_JOB_ID", environ["SLURM_JOB_ID"])
        + (f"_{environ['SLURM_ARRAY_TASK_ID']}" if "SLURM_ARRAY_TASK_ID" in environ else ""),
        "node": environ.get("SLURMD_NODENAME"),
        "partition": environ.get("SLURM_JOB_PARTITION"),
    }


def hydra_job(cfg: DictConfig) -> dict:
    """The sweep app's task: the composed cell config -> run_cell. Returns a small summary that
    launchers carry back to the sweeper (the record itself is in the store)."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    values = OmegaConf.to_container(cfg, resolve=True)
    store = Path(hydra.runtime.cwd) / Path(values["store"]).expanduser()
    if values["tb_dir"]:
        values["tb_dir"] = str(Path(hydra.runtime.cwd) / Path(values["tb_dir"]).expanduser())
    values["project"] = values["project"] or os.environ.get("WANDB_PROJECT")
    config = TrainConfig.from_mapping(trainer_values(values))
    key = cell_key(config.to_dict())
    if values["planned_cell"] and values["planned_cell"] != key:
        raise PlanChanged(f"this job's config is cell {key}, not the cell {values['planned_cell']} its sweep "
                          f"planned: a config file changed after the sweep started (the job composed "
                          f"it again); rerun the sweep to plan from the files as they are now")
    ranks = job_ranks(dict(os.environ))
    if ranks is not None and not ranks.leader:
        follow_cell(config, store, ranks)
        return {"key": key, "status": f"rank {ranks.rank}"}
    record = run_cell(
        config,
        store,
        experiment=hydra.runtime.choices.get("experiment"),
        slurm=slurm_info(dict(os.environ)),
        keep_checkpoint=values["keep_checkpoints"],
        force=values["force"],
        ranks=ranks,
    )
    if record is None:
        return {"key": key, "status": "claimed"}
    return {"key": record["key"], "status": record["status"]}
