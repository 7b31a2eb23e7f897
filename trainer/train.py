"""The training loop of one cell: ``run(TrainConfig) -> Result``, and a CLI on top.

    python -m trainer.train width=512 depth=4 lr=-8 param=mup optimizer=muon_kimi run_dir=runs/a

Warmup then cosine decay of eta_base to a floor, gradient clipping, eval on fixed validation
batches, bf16 autocast and torch.compile as options. A diverging run stops early with status
``diverged``. With a run_dir, the run checkpoints atomically every N steps and on SIGTERM/SIGUSR2,
and a restarted run resumes there and ends with the same result as an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from .atomic import atomic_write
from .callbacks import Callback, Callbacks
from .config import CHECKPOINT, RESULT, TrainConfig, recorded_default, result_fields
from .data.batches import fixed_batches
from .data.cache import DataUnavailable
from .data.tokens import load_tokens
from .device import DeviceBatches, StepTimer, is_async
from .distributed import (CollectiveFailed, Group, Ranks, check_ranks, clear_roll_call, joined, lost_ranks,
                          rank_device, roll_call_folder, rows, world_size)
from .local_ranks import launch
from .microbatch import resolve_micro_batch
from .model_factory import loss_function
from .optim.build import build_optimizers
from .parameterization import build_model, param_groups
from .precision import Precision
from .step import TrainingStep
from .stop_request import StopRequest
from .tracking import trackers



@dataclass
class Result:
    config: dict
    status: str  # "ok" | "diverged"
    val_loss: Optional[float]
    train_loss: Optional[float]
    steps_done: int
    tokens: int
    wall_time_s: float
    tokens_per_s: float
    device: str
    precision: str
    versions: dict
    curves: dict = field(default_factory=lambda: {"train": [], "val": []})
    val_loss_se: Optional[float] = None  # standard error of val_loss over the eval batches

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available: use device=cpu or auto")
    return torch.device(name)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """eta_t / eta_base: linear warmup, then cosine decay of eta_base down to lr_floor (D.3.1)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = min(cfg.lr_floor / cfg.eta_base, 1.0)
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def library_versions() -> dict:
    import numpy

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def run_settings(cfg: TrainConfig) -> dict:
    """The settings that make a run what it is: a checkpoint resumes only the run it came from."""
    return {name: getattr(cfg, name) for name in result_fields()}


def check_checkpoint_owner(saved: dict, cfg: TrainConfig, path: Path) -> None:
    """Raises ValueError when the checkpoint at ``path`` was written by a run with other settings.
    A setting the checkpoint predates is compared with its default; a checkpoint from before runs
    were recorded in checkpoints is taken as it is."""
    if "run" not in saved:
        print(f"note: {path} does not say which run wrote it (an older mutransfer); resuming it",
              file=sys.stderr)
        return
    mine = run_settings(cfg)
    differ = [f"{k}={saved['run'].get(k, recorded_default(k))!r} there, {v!r} here"
              for k, v in mine.items() if saved["run"].get(k, recorded_default(k)) != v]
    if differ:
        raise ValueError(f"{path} belongs to another run ({'; '.join(differ)}): use another "
                         f"run_dir, or delete the checkpoint to start this run afresh")


def batch_losses(model, batches, device, autocast, micro_batch_size: int,
                 group: Optional[Group] = None) -> list[float]:
    """Each batch's mean loss, in passes of micro_batch_size rows (as training's) and read back
    once for all batches; over a group's ranks, the mean of their shares' (equal rows)."""
    model.eval()
    with torch.no_grad(), autocast():
        losses = []
        for x, y in batches:
            parts = [loss_function(model)(xs.to(device), ys.to(device))
                     for xs, ys in zip(x.split(micro_batch_size), y.split(micro_batch_size))]
            losses.append(parts[0] if len(parts) == 1 else torch.stack(parts).mean())
    model.train()
    losses = torch.stack(losses)
    return (losses if group is None else group.average(losses)).tolist()


def evaluate(model, batches, device, autocast, micro_batch_size: int, group: Optional[Group] = None) -> float:
    losses = batch_losses(model, batches, device, autocast, micro_batch_size, group)
    return sum(losses) / len(losses)


# Optimizer group settings that say how a step is computed here, not what it computes: a checkpoint
# keeps the optimizer's own (a CPU checkpoint resumed on CUDA stays fused).
IMPLEMENTATION_SETTINGS = ("fused", "foreach", "capturable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    groups = [{**s, **{k: g[k] for k in IMPLEMENTATION_SETTINGS if k in g}}
              for s, g in zip(saved["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({**saved, "param_groups": groups})


def restore_checkpoint(path: Path, cfg: TrainConfig, model, optimizers, schedules
                       ) -> Optional[tuple[dict, torch.Tensor]]:
    """Loads ``path`` onto the CPU and into the model, optimizers and schedules on their device;
    returns the loop's state and the data generator's (a CPU tensor, as torch.Generator needs).
    The loaded copy is dropped on return, before the first resumed step allocates anything.
    An unreadable file is moved aside (None: the run starts from step 0)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:  # torn by a kill or a full disk
        corrupt = path.with_name(path.name + ".corrupt")
        os.replace(path, corrupt)
        why = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        print(f"checkpoint {path} is unreadable ({why}): moved to {corrupt.name}, the run "
              f"restarts from step 0", file=sys.stderr)
        return None
    check_checkpoint_owner(saved, cfg, path)
    if saved.get("shard", False) != cfg.shard:  # the two keep optimizer states in other layouts
        raise ValueError(f"{path} was written with shard={str(saved.get('shard', False)).lower()}: resume "
                         f"it with that setting, or delete the checkpoint to start afresh")
    if cfg.shard:
        from .sharding import load_full_state

        load_full_state(model, optimizers, saved["model"], saved["optimizers"])
    else:
        model.load_state_dict(saved["model"])
        for opt, s in zip(optimizers, saved["optimizers"]):
            load_optimizer_state(opt, s)
    for sched, s in zip(schedules, saved["schedules"]):
        sched.load_state_dict(s)
    return saved["state"], saved["batches"]


def standard_error(values: list[float]) -> Optional[float]:
    """Of the mean: the noise of one run's final loss (None from a single batch, or a non-finite one)."""
    n = len(values)
    if n < 2 or not all(math.isfinite(v) for v in values):
        return None
    return statistics.stdev(values) / math.sqrt(n)


def is_diverged(loss: float, first_loss: Optional[float], cfg: TrainConfig) -> bool:
    """A non-finite loss, or one above divergence_factor x the first (when the factor is not 0)."""
    return bool(device_divergence(torch.tensor(loss, dtype=torch.float64), None, first_loss, cfg))


def device_divergence(loss: torch.Tensor, pending: Optional[torch.Tensor], first_loss: Optional[float],
                      cfg: TrainConfig) -> torch.Tensor:
    """The divergence rule (is_diverged) as a device tensor, or-ed into ``pending``: no host sync."""
    bad = ~torch.isfinite(loss)
    if first_loss is not None and cfg.divergence_factor > 0:
        bad = bad | (loss > cfg.divergence_factor * first_loss)
    return bad if pending is None else pending | bad


def run(cfg: TrainConfig, callbacks: Sequence[Callback] = (), ranks: Optional[Ranks] = None
        ) -> Optional[Result]:
    """Trains one cell. The callbacks, and the tracker that ``cfg.logger`` names, watch the loop
    (trainer.callbacks); however the run ends, they are told.

    A cell of several ranks (gpus_per_cell x nodes_per_cell > 1, trainer.distributed): ``ranks``
    says which one this process is (each rank calls run; rank 0's callbacks watch), or without it
    the ranks are started on this machine (trainer.local_ranks). Every rank returns the Result,
    None where rank 0 said the cell does not train (``dismiss``)."""
    cfg.validate()
    if ranks is None and world_size(cfg) > 1:
        return launch(cfg, callbacks)
    if ranks is not None:
        check_ranks(cfg, ranks)
    hooks = Callbacks([*callbacks, *trackers(cfg)] if ranks is None or ranks.leader else [])
    result = None
    try:
        result = _train(cfg, hooks, ranks)
        return result
    finally:
        hooks.on_end(result)


def dismiss(cfg: TrainConfig, ranks: Ranks) -> None:
    """Rank 0's word to the other ranks that the cell does not train (done, or trained elsewhere)."""
    with joined(ranks, rank_device(resolve_device(cfg.device), ranks), cfg.collective_timeout_s) as group:
        group.start(False)


def _train(cfg: TrainConfig, hooks: Callback, ranks: Optional[Ranks]) -> Optional[Result]:
    if cfg.run_dir and Path(cfg.run_dir).exists() and not Path(cfg.run_dir).is_dir():
        raise FileExistsError(f"run_dir={cfg.run_dir} is a file: give a directory (new or a run's) for "
                              f"the run's checkpoints")
    device = rank_device(resolve_device(cfg.device), ranks)
    precision = Precision.of(cfg.precision, device)
    # The resolved precision is part of what the run is: its config, record key and checkpoint say it.
    cfg = replace(cfg, precision=precision.name)
    if ranks is not None and ranks.leader:
        clear_roll_call(roll_call_folder(cfg.run_dir))
    with precision.matmuls(), joined(ranks, device, cfg.collective_timeout_s) as group:
        if group is not None and not group.start(True):
            return None
        if group is not None:
            print(f"rank {ranks.rank} of {ranks.world_size}: pid {os.getpid()} on {platform.node()}, {device}",
                  file=sys.stderr, flush=True)
        progress = {"step": 0}
        try:
            return _train_on(cfg, device, precision, hooks, group, progress)
        except CollectiveFailed as err:  # a peer died: name it (rank 0) rather than the backend's words
            raise lost_ranks(ranks, err, roll_call_folder(cfg.run_dir), progress["step"]) from err


def _train_on(cfg: TrainConfig, device: torch.device, precision: Precision, hooks: Callback,
              group: Optional[Group], progress: dict) -> Result:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_tokens(cfg.dataset, cfg.tokenizer, cfg.data_dir)
    vocab_size = cfg.model_vocab(data.vocab_size)

    ranks = group.ranks if group is not None else None
    share = rows(cfg.batch_size, ranks)  # this rank's rows of every batch
    # a rank's micro batch: as one process's on the rank's rows
    one_rank = replace(cfg, batch_size=cfg.batch_size // world_size(cfg), gpus_per_cell=1, nodes_per_cell=1)
    micro_batch_size = resolve_micro_batch(one_rank, vocab_size, device, precision.name)
    if group is not None:
        micro_batch_size = group.smallest(micro_batch_size)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, vocab_size, torch.Generator().manual_seed(cfg.seed)).to(device)
    if group is not None:
        group.broadcast_(model.parameters())  # one model on every rank, whatever its init did
        if cfg.shard:
            from .sharding import shard_model

            shard_model(model)
    optimizers = build_optimizers(param_groups(model, cfg), cfg)
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s, cfg)) for o in optimizers]
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    val_batches = [(x[share], y[share])
                   for x, y in fixed_batches(data.val, cfg.eval_batches, cfg.batch_size, cfg.seq_len, seed=0)]
    step_once = TrainingStep(model, optimizers, precision, micro_batch_size, cfg.grad_clip,
                             loss_fn=torch.compile(loss_function(model)) if cfg.compile else loss_function(model),
                             sync=None if group is None else group.sync_loss if cfg.shard else group.sync_gradients)

    state = progress  # the caller reads the step a failure happened at
    state |= {"step": 0, "first_loss": None, "train_time_s": 0.0, "wall_time_s": 0.0,
             "curves": {"train": [], "val": []}}
    run_dir = Path(cfg.run_dir) if cfg.run_dir else None
    checkpoint = run_dir / CHECKPOINT if run_dir else None
    restored = None
    if checkpoint is not None and checkpoint.exists():
        restored = restore_checkpoint(checkpoint, cfg, model, optimizers, schedules)
    if restored is not None:
        saved_state, generator_state = restored
        state.update(saved_state)
        generator.set_state(generator_state)
        print(f"resuming from {checkpoint} at step {state['step']}", file=sys.stderr)
    batches = DeviceBatches(data.train, cfg.batch_size, cfg.seq_len, generator, device, share)
    leader = ranks is None or ranks.leader
    hooks.on_start(cfg.to_dict(), state["step"])

    def snapshot() -> dict:
        if cfg.shard:  # whole tensors gathered on rank 0 (a collective: every rank calls it)
            from .sharding import full_state

            model_state, optimizer_states = full_state(model, optimizers)
        else:
            model_state, optimizer_states = model.state_dict(), [o.state_dict() for o in optimizers]
        return {"run": run_settings(cfg), "model": model_state, "optimizers": optimizer_states,
                "schedules": [s.state_dict() for s in schedules], "batches": batches.state(),
                "state": state, "shard": cfg.shard}

    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    status = "ok"
    started = time.perf_counter() - state["wall_time_s"]
    tokens_per_step = cfg.batch_size * cfg.seq_len
    train_loss = state["curves"]["train"][-1][1] if state["curves"]["train"] else None
    timer = StepTimer(device)
    timer.seconds = state["train_time_s"]
    pending = None  # on an async device: whether a loss since the last read-back diverged, there
    with StopRequest() as stop:
        for step in range(state["step"], cfg.steps):
            timer.step_started()
            x, y = batches.next(prefetch=step + 1 < cfg.steps)
            loss = step_once(x, y)
            # every rank stops at the same step, whichever one the signal reached first
            stopping = group.any(stop.signum is not None) if group is not None else stop.signum is not None
            for sched in schedules:
                sched.step()
            state["step"] = step + 1
            logged = (step + 1) % cfg.log_interval == 0 or step == 0 or step + 1 == cfg.steps
            evaluated = cfg.eval_interval and (step + 1) % cfg.eval_interval == 0 and step + 1 < cfg.steps
            saving = checkpoint is not None and cfg.checkpoint_interval and (step + 1) % cfg.checkpoint_interval == 0
            if is_async(device) and not (logged or evaluated or saving or stopping):
                # no host sync: the divergence check stays on the device until the next read-back
                pending = device_divergence(loss, pending, state["first_loss"], cfg)
                continue
            state["train_time_s"] = timer.read_back()
            train_loss = loss.item()
            if pending is not None and pending.item():  # a loss since the last read-back diverged
                train_loss, pending = math.nan, None
            if state["first_loss"] is None:
                state["first_loss"] = train_loss
            if logged:
                state["curves"]["train"].append([step + 1, train_loss])
                rate = tokens_per_step * state["step"] / max(state["train_time_s"], 1e-9)
                if cfg.print_steps:
                    print(f"step {step + 1}/{cfg.steps} loss {train_loss:.4f} "
                          f"lr {cfg.eta_base * lr_factor(step, cfg):.3g} {rate:,.0f} tok/s", file=sys.stderr)
                hooks.on_log(step + 1, {"train/loss": train_loss, "train/tokens_per_s": rate,
                                        "train/lr_factor": lr_factor(step, cfg)})
            if is_diverged(train_loss, state["first_loss"], cfg):
                status = "diverged"
                break
            if evaluated:
                val = evaluate(model, val_batches, device, precision.autocast, micro_batch_size, group)
                state["curves"]["val"].append([step + 1, val])
                hooks.on_eval(step + 1, {"val/loss": val})
            state["wall_time_s"] = time.perf_counter() - started
            if saving or (checkpoint is not None and stopping):
                taken = snapshot() if leader or cfg.shard else None
                if leader:
                    save_checkpoint(checkpoint, taken)
            if stopping:
                if group is not None:
                    group.barrier()  # no rank leaves before rank 0's checkpoint is written
                print(f"signal {stop.signum}: checkpoint saved at step {step + 1}" if leader else
                      f"signal {stop.signum}: stopped at step {step + 1}, rank 0 saved the checkpoint",
                      file=sys.stderr)
                stop.hand_over()

    val_loss = val_loss_se = None
    if status == "ok":
        losses = batch_losses(model, val_batches, device, precision.autocast, micro_batch_size, group)
        val_loss, val_loss_se = sum(losses) / len(losses), standard_error(losses)
        state["curves"]["val"].append([state["step"], val_loss])
        hooks.on_eval(state["step"], {"val/loss": val_loss})
        if not math.isfinite(val_loss):
            status, val_loss = "diverged", None
    if status == "diverged":
        train_loss = train_loss if train_loss is not None and math.isfinite(train_loss) else None
    wall = time.perf_counter() - started
    result = Result(
        config=cfg.to_dict(), status=status, val_loss=val_loss, train_loss=train_loss,
        steps_done=state["step"], tokens=state["step"] * tokens_per_step, wall_time_s=wall,
        tokens_per_s=state["step"] * tokens_per_step / max(state["train_time_s"], 1e-9),
        device=str(device), precision=precision.name, versions=library_versions(), curves=state["curves"],
        val_loss_se=val_loss_se,
    )
    if run_dir is not None and leader:
        (run_dir / RESULT).write_text(json.dumps(result.to_dict(), indent=1))
    return result


def main(argv: list[str]) -> int:
    from .cli import load_config

    try:
        cfg = load_config(argv)
        result = run(cfg, ranks=Ranks.from_environment(os.environ))  # under torchrun: one rank
        if result is None:
            return 0
    except (ValueError, DataUnavailable, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in result.to_dict().items() if k not in ("curves", "config")}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
