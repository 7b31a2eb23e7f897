"""A batch of cells as submitit jobs (a Slurm job array, or local processes) through a
hydra-submitit-launcher, each job settled on its own.

The launcher's own ``launch`` waits on its jobs in order and raises at the first one that ended
without a result (scancel, a kill for memory, a lost node), which would abandon the rest of the
sweep. This submits the same jobs with the same executor settings, tells the caller the Slurm job
ids as soon as sbatch returns, and then collects every job: None when it finished (its cell's
record is in the store), the exception its cell ended with, or a JobLostError with the scheduler's
state and the tail of the job's log.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import submitit
from hydra.core.singleton import Singleton
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher, SlurmLauncher
from omegaconf import OmegaConf
from submitit.core.utils import FailedJobError, UncompletedJobError

from trainer.logs import log_tail

from .job import JobLostError
from .job_return import failure

# Scheduler states of a job that ended normally (Slurm, submitit's local executor): its result
# file must come, so submitit's own wait for a slow shared filesystem applies.
_ENDED_NORMALLY = ("COMPLETED", "FINISHED")


def make_executor(launcher: BaseSubmititLauncher) -> submitit.AutoExecutor:
    """A submitit.AutoExecutor for the launcher's config (``hydra/launcher=submitit_local`` or
    ``submitit_slurm``, a conf/cluster profile): the config's keys that every executor shares
    (hydra_submitit_launcher's BaseQueueConf) as they are, the others with the cluster's prefix, as
    AutoExecutor.update_parameters takes them; max_num_timeout at construction."""
    kind = "slurm" if isinstance(launcher, SlurmLauncher) else "local"
    params = dict(launcher.params)
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init[f"{kind}_max_num_timeout"] = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(cluster=kind, **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"{kind}_{k}": v for k, v in params.items()})
    return executor


class _RaisingJob:
    """The launcher's job function, but a cell that failed raises out of the job instead of being
    returned as a value (Hydra's run_job catches it), so the job exits with an error and Slurm's
    accounting says FAILED. Requeued after preemption as itself, like the launcher."""

    def __init__(self, launcher: BaseSubmititLauncher) -> None:
        self.launcher = launcher

    def __call__(self, *args):
        returned = self.launcher(*args)
        err = failure(returned)
        if err is not None:
            raise err
        return returned

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def launch(launcher: BaseSubmititLauncher, batch: list[list[str]], first_job_idx: int,
           submitted: Callable[[list[str]], None], poll_s: float = 1.0) -> list[Optional[BaseException]]:
    """Submits one job per override list (as the launcher would) and waits for all of them.
    ``submitted(job_ids)`` gets the Slurm job ids, in batch order, right after submission."""
    executor = make_executor(launcher)
    singletons = Singleton.get_state()
    # The arguments of BaseSubmititLauncher.__call__, the function each job runs.
    args = [(list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", singletons)
            for idx, overrides in enumerate(batch, start=first_job_idx)]
    jobs = executor.map_array(_RaisingJob(launcher), *zip(*args))
    if executor.cluster == "slurm":
        submitted([job.job_id for job in jobs])
    return collect(jobs, poll_s)


def collect(jobs: list[submitit.Job], poll_s: float) -> list[Optional[BaseException]]:
    """Each job's outcome once it is done, whatever order they end in."""
    outcomes: dict[int, Optional[BaseException]] = {}
    while True:
        for i, job in enumerate(jobs):
            if i not in outcomes and job.done():
                outcomes[i] = outcome(job)
        if len(outcomes) == len(jobs):
            return [outcomes[i] for i in range(len(jobs))]
        time.sleep(poll_s)


def outcome(job: submitit.Job) -> Optional[BaseException]:
    """None for a job that finished its cell, else what it ended with."""
    state = job.state.split()[0]  # sacct writes e.g. "CANCELLED by 0"
    if not job.paths.result_pickle.exists() and state not in _ENDED_NORMALLY:
        return lost(job, state)
    try:
        job.results()
    except UncompletedJobError:  # ended normally but left no result
        return lost(job, state)
    except FailedJobError as err:  # the cell failed (its record says why), or the job around it
        return err
    return None


def lost(job: submitit.Job, state: str) -> JobLostError:
    slurm = isinstance(job, submitit.SlurmJob)
    return JobLostError(
        f"{'Slurm job' if slurm else 'job'} {job.job_id} ended {state} before its cell was "
        f"recorded (log: {job.paths.stderr})",
        slurm_state=state if slurm else None, job_id=job.job_id,
        log_tail=log_tail(job.paths.stderr) or log_tail(job.paths.stdout))


