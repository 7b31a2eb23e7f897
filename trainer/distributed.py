"""The ranks of one cell: data parallelism that keeps the step the step of one process.

Every rank draws the same global batch from the same generator and takes its own contiguous rows
(``rows``), so the ranks together see exactly one process's batch in one process's token order;
each rank runs its rows in micro-batches into .grad (trainer.step), and ``Group.sync_gradients``
averages the gradients and the loss over the ranks with one all-reduce. Equal row counts make the
average of the ranks' mean gradients the gradient of the global batch's mean loss, so clipping and
every optimizer (Muon, Shampoo, SOAP and SSO included) see the full gradient of one process, and
each rank takes the same update of the same weights. Divergence is decided on the averaged loss,
evaluation averages the ranks' per-batch losses, and a stop signal on any rank stops all of them
at the same step (``Group.any``). Only rank 0 writes (checkpoint, result); every rank reads the
checkpoint on resume.

The group is initialised from a ``Ranks`` (what torchrun and submitit's
``TorchDistributedEnvironment`` export: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
NCCL on CUDA, gloo on a CPU, with a timeout on every collective so that a dead rank fails the
others instead of hanging them.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Optional

import torch
import torch.distributed as dist

from .config import TrainConfig
from .cost import ALLREDUCE_BUCKET_ELEMENTS

ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# After a collective fails, how long rank 0 waits for the other survivors to say so: the ranks that
# stay silent are the ones that died.
ROLL_CALL_S = 10.0


class CollectiveFailed(RuntimeError):
    """A collective of the cell's group raised: a peer died, or stopped answering (the timeout)."""


class RankLost(RuntimeError):
    """The cell's group broke because ranks ``lost`` died or stopped answering (empty: not known)."""

    def __init__(self, message: str, lost: list[int]):
        super().__init__(message)
        self.lost = lost


def _collective(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as err:
            raise CollectiveFailed(f"{method.__name__}: {(str(err).splitlines() or [''])[0]}") from err
    return wrapped


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of its cell, and where rank 0 listens."""
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Optional["Ranks"]:
        """From torchrun's (or submitit's exported) variables; None when RANK is not set."""
        if "RANK" not in environ:
            return None
        missing = [name for name in ENVIRONMENT if name not in environ and name != "LOCAL_RANK"]
        if missing:
            raise ValueError(f"RANK is set but {', '.join(missing)} not: start the ranks with torchrun, "
                             f"or through a cluster profile (cluster=...), which exports them all")
        return cls(int(environ["RANK"]), int(environ["WORLD_SIZE"]),
                   int(environ.get("LOCAL_RANK", environ["RANK"])), environ["MASTER_ADDR"],
                   int(environ["MASTER_PORT"]))

    @property
    def leader(self) -> bool:
        return self.rank == 0


def world_size(cfg: TrainConfig) -> int:
    """The ranks a cell runs on: gpus_per_cell on each of nodes_per_cell nodes."""
    return cfg.gpus_per_cell * cfg.nodes_per_cell


def rows(batch_size: int, ranks: Optional[Ranks]) -> slice:
    """The rows of a global batch that ``ranks`` trains on (all of them for one process)."""
    if ranks is None:
        return slice(None)
    share = batch_size // ranks.world_size
    return slice(ranks.rank * share, (ranks.rank + 1) * share)


def rank_device(device: torch.device, ranks: Optional[Ranks]) -> torch.device:
    """A rank's GPU: its local rank among the GPUs it sees (one, where submitit set
    CUDA_VISIBLE_DEVICES to it; all of the node's under torchrun)."""
    if ranks is None or device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", ranks.local_rank % torch.cuda.device_count())


class Group:
    """An initialised process group of one cell's ranks (``joined`` makes one)."""

    def __init__(self, ranks: Ranks, device: torch.device, timeout_s: float):
        self.ranks, self.device = ranks, device
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            init_method=f"tcp://{ranks.master_addr}:{ranks.master_port}",
            rank=ranks.rank, world_size=ranks.world_size, timeout=datetime.timedelta(seconds=timeout_s))

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    @_collective
    def sync_gradients(self, model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
        """Averages every .grad and ``loss`` over the ranks, in flat all-reduces of at most
        ALLREDUCE_BUCKET_ELEMENTS (the copy a step adds stays bounded); returns the averaged loss.
        Every rank holds gradients of the same parameters (one model, all of it used)."""
        loss = loss.detach().reshape(1).clone()
        tensors = [p.grad for p in model.parameters() if p.grad is not None] + [loss]
        start = 0
        while start < len(tensors):
            end, size = start + 1, tensors[start].numel()
            while end < len(tensors) and size + tensors[end].numel() <= ALLREDUCE_BUCKET_ELEMENTS:
                size += tensors[end].numel()
                end += 1
            bucket = tensors[start:end]
            flat = torch.cat([t.reshape(-1).float() for t in bucket])
            dist.all_reduce(flat)
            flat /= self.ranks.world_size
            offset = 0
            for t in bucket:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()
            start = end
        return loss[0]

    @_collective
    def sync_loss(self, model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
        """The loss averaged over the ranks (shard=true: FSDP averages the gradients itself)."""
        return self.average(loss.detach().reshape(1))[0].to(loss.dtype)

    @_collective
    def average(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over the ranks of a tensor each rank holds (evaluation's per-batch losses)."""
        values = values.to(self.device, torch.float32).clone()
        dist.all_reduce(values)
        return values / self.ranks.world_size

    @_collective
    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a stop signal reaching one rank first)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    @_collective
    def smallest(self, value: int) -> int:
        """The smallest of the ranks' values (each rank's micro batch probe: the one all can run)."""
        t = torch.tensor([value], device=self.device, dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    @_collective
    def broadcast_(self, tensors) -> None:
        """Rank 0's values into every rank's ``tensors`` (the weights at the start: one model)."""
        for t in tensors:
            dist.broadcast(t.data, src=0)

    @_collective
    def barrier(self) -> None:
        dist.barrier()

    @_collective
    def start(self, go: bool) -> bool:
        """Rank 0's word to the others whether the cell trains (False: it is trained elsewhere or
        done, so the followers stop instead of waiting for collectives that never come)."""
        word = torch.tensor([1 if go else 0], device=self.device)
        dist.broadcast(word, src=0)
        return bool(word.item())


def roll_call_folder(run_dir: Optional[str]) -> Optional[Path]:
    return Path(run_dir) / "ranks" if run_dir else None


def clear_roll_call(folder: Optional[Path]) -> None:
    """Rank 0, before the ranks start: no answer left from an earlier attempt."""
    if folder is not None and folder.is_dir():
        for stale in folder.glob("rank*.alive"):
            stale.unlink(missing_ok=True)


def lost_ranks(ranks: Ranks, err: CollectiveFailed, folder: Optional[Path], step: int) -> RankLost:
    """What a rank whose collective failed raises: each survivor answers in ``folder`` (the run
    dir's ranks/), and rank 0 names the ranks that never do, within ROLL_CALL_S."""
    if folder is None:
        return RankLost(f"rank {ranks.rank} of {ranks.world_size}: a collective failed in step {step + 1} (another "
                        f"rank died or stopped answering): {err}", [])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{ranks.rank}.alive").write_text(str(err))
    if not ranks.leader:
        return RankLost(f"rank {ranks.rank} of {ranks.world_size}: a collective failed in step {step + 1}: {err}", [])
    deadline = time.monotonic() + ROLL_CALL_S
    while True:
        lost = [r for r in range(ranks.world_size) if not (folder / f"rank{r}.alive").exists()]
        if not lost or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    which = (f"rank{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of {ranks.world_size} died or "
             f"stopped answering" if lost else "a rank failed")
    return RankLost(f"{which} in step {step + 1}: the cell's collectives failed ({err})", lost)


def check_ranks(cfg: TrainConfig, ranks: Ranks) -> None:
    """Raises ValueError when the ranks started are not the ranks the cell's settings ask for
    (TrainConfig.validate checks that its batch splits over them)."""
    if ranks.world_size != world_size(cfg):
        raise ValueError(f"this cell runs on {ranks.world_size} ranks, but gpus_per_cell x nodes_per_cell = "
                         f"{cfg.gpus_per_cell} x {cfg.nodes_per_cell} = {world_size(cfg)}: start as many "
                         f"ranks as the settings say")


@contextlib.contextmanager
def joined(ranks: Optional[Ranks], device: torch.device, timeout_s: float) -> Iterator[Optional[Group]]:
    """The cell's process group for the loop's duration (None for one process)."""
    if ranks is None:
        yield None
        return
    group = Group(ranks, device, timeout_s)
    try:
        yield group
        # every rank past its last collective before any tears the group down: a rank that closes
        # its connections while a peer still sends can abort that peer at exit
        group.barrier()
    finally:
        group.close()
