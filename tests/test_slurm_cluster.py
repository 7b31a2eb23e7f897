"""The local Slurm test cluster (slurm/local/start) driven by plain submitit, and the cluster
profiles (conf/cluster/) as Hydra and hydra-submitit-launcher read them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
PROFILES = sorted(p.stem for p in (REPO / "conf" / "cluster").glob("*.yaml"))

# The jobs unpickle this module's functions; tests/ is not importable on the node, so ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def executor(folder: Path, partition: str) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    ex.update_parameters(slurm_partition=partition, timeout_min=5, cpus_per_task=1, mem_gb=1)
    return ex


def describe_job(n: int) -> dict:
    return {"square": n * n, "job_id": os.environ.get("SLURM_JOB_ID"), "python": sys.executable}


def sleep_after_marking(marker: str, seconds: float) -> None:
    Path(marker).touch()
    time.sleep(seconds)


class CountStarts(submitit.helpers.Checkpointable):
    """Counts its starts in a file; the first start blocks until the job is requeued."""

    def __call__(self, counter: str) -> int:
        path = Path(counter)
        starts = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(starts))
        if starts == 1:
            time.sleep(600)
        return starts


def daemon_pids() -> dict:
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                            check=True).stdout
    pidfiles = dict(line.split("=", 1) for line in config.splitlines()
                    if line.startswith(("SlurmctldPidFile", "SlurmdPidFile")))
    return {key.strip(): Path(value.strip()).read_text().strip() for key, value in pidfiles.items()}


@pytest.mark.timeout(120)
def test_start_again_is_a_quick_noop(slurm_cluster):
    before = daemon_pids()
    t0 = time.monotonic()
    proc = subprocess.run([str(REPO / "slurm" / "local" / "start")], capture_output=True, text=True)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert daemon_pids() == before, "start restarted a daemon of a healthy cluster"
    assert elapsed < 15, f"start on a running cluster took {elapsed:.1f} s"
    sinfo = subprocess.run(["sinfo", "-h", "-p", slurm_cluster, "-o", "%T"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert sinfo and sinfo[0] in {"idle", "mixed", "allocated"}, sinfo


@pytest.mark.timeout(120)
def test_submitit_job_returns_its_result(slurm_cluster, tmp_path, wait_until):
    job = executor(tmp_path, slurm_cluster).submit(describe_job, 7)
    result = job.result()
    assert result == {"square": 49, "job_id": job.job_id, "python": sys.executable}
    # The final state comes from the accounting database (sacct).
    wait_until(lambda: job.get_info(mode="force").get("State") == "COMPLETED", 30,
               f"sacct reporting job {job.job_id} COMPLETED")


@pytest.mark.timeout(120)
def test_several_one_cpu_jobs_run_at_once(slurm_cluster, tmp_path, wait_until):
    markers = [tmp_path / f"started_{i}" for i in range(3)]
    jobs = [executor(tmp_path, slurm_cluster).submit(sleep_after_marking, str(m), 60) for m in markers]
    try:
        wait_until(lambda: all(m.exists() for m in markers), 30, "3 one-CPU jobs running together")
    finally:
        for job in jobs:
            job.cancel(check=False)


@pytest.mark.timeout(120)
def test_scancel_is_seen_as_cancelled(slurm_cluster, tmp_path, wait_until):
    marker = tmp_path / "started"
    job = executor(tmp_path, slurm_cluster).submit(sleep_after_marking, str(marker), 600)
    wait_until(marker.exists, 30, f"job {job.job_id} starting")
    subprocess.run(["scancel", job.job_id], check=True)
    wait_until(lambda: job.done(force_check=True), 30, f"submitit seeing job {job.job_id} end")
    # done() ends job.result()'s wait; it then raises UncompletedJobError (after submitit's 15 s
    # grace for slow filesystems), where without accounting (no sacct state) the wait would never end.
    assert job.state.startswith("CANCELLED"), job.state


@pytest.mark.timeout(120)
def test_scontrol_requeue_restarts_a_running_job(slurm_cluster, tmp_path, wait_until):
    counter = tmp_path / "starts"
    job = executor(tmp_path, slurm_cluster).submit(CountStarts(), str(counter))
    wait_until(counter.exists, 30, f"job {job.job_id} starting")
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    assert job.result() == 2  # the same job id ran a second time and finished
    history = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job.job_id],
                             capture_output=True, text=True, check=True).stdout.split()
    assert history[0] == "REQUEUED", history


def write_hydra_app(root: Path) -> Path:
    """A minimal Hydra app whose config group `cluster` is the repo's conf/cluster/."""
    (root / "conf").mkdir()
    (root / "conf" / "config.yaml").write_text(
        "defaults:\n  - _self_\n  - cluster: null\n"
        "n: 1\n"
        f"hydra:\n  searchpath:\n    - file://{REPO / 'conf'}\n"
        "  sweep:\n    dir: multirun\n    subdir: ${hydra.job.num}\n")
    app = root / "app.py"
    app.write_text(
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "import hydra\n"
        "from hydra.core.hydra_config import HydraConfig\n\n"
        "@hydra.main(config_path='conf', config_name='config', version_base='1.3')\n"
        "def main(cfg):\n"
        "    out = Path(HydraConfig.get().runtime.output_dir) / 'job.json'\n"
        "    out.write_text(json.dumps({'square': cfg.n * cfg.n, 'python': sys.executable,\n"
        "                               'job_id': os.environ.get('SLURM_JOB_ID')}))\n\n"
        "if __name__ == '__main__':\n"
        "    main()\n")
    return app


@pytest.mark.parametrize("profile", PROFILES)
def test_cluster_profile_configures_the_slurm_launcher(profile, tmp_path):
    write_hydra_app(tmp_path)
    with initialize_config_dir(config_dir=str(tmp_path / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"cluster={profile}"], return_hydra_config=True)
    # Unknown keys fail the merge into SlurmQueueConf; resolving checks the interpolations.
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True, throw_on_missing=True)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["partition"] and launcher["timeout_min"] > 0


@pytest.mark.timeout(180)
def test_local_profile_runs_a_hydra_multirun_on_the_cluster(slurm_cluster, tmp_path):
    app = write_hydra_app(tmp_path)
    proc = subprocess.run([sys.executable, str(app), "-m", "n=2,3", "cluster=local"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / "multirun" / str(i) / "job.json").read_text()) for i in (0, 1)]
    assert [r["square"] for r in results] == [4, 9]
    assert all(r["job_id"] and r["python"] == sys.executable for r in results), results


def sweep_config(overrides: list[str]):
    import sweeper.grid.app_config  # noqa: F401  registers the sweep app's schema

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("sweep", overrides=overrides, return_hydra_config=True)


def test_local_profile_gives_each_cell_one_torch_thread_per_cpu():
    cfg = sweep_config(["cluster=local"])  # the trainer's default (0: all cores) is overridden
    assert cfg.threads == cfg.hydra.launcher.cpus_per_task == 1
    assert sweep_config(["cluster=local", "threads=2"]).threads == 2  # the command line still wins


def test_gpu_profile_job_script_asks_for_its_gpus_time_and_requeue(slurm_cluster, tmp_path):
    """The sbatch script submitit would submit for a cell of the example GPU profile, built the way
    the sweep builds it (sweeper.jobs.submitit_jobs.make_executor), without submitting it."""
    from hydra.utils import get_class

    from sweeper.jobs.submitit_jobs import make_executor

    cfg = sweep_config(["cluster=example_gpu", f"hydra.sweep.dir={tmp_path}"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    launcher = get_class(params.pop("_target_"))(**params)
    script = make_executor(launcher)._executor._make_submission_file_text("python -m cell", "uid")
    lines = script.splitlines()
    for flag in ("--gpus-per-task=1", "--time=240", "--partition=gpu", "--cpus-per-task=8",
                 "--mem=64GB", "--requeue", "--signal=USR2@120"):
        assert f"#SBATCH {flag}" in lines, f"{flag} missing from:\n{script}"
    assert "module load cuda/12.4" in lines
    assert launcher.params["max_num_timeout"] == make_executor(launcher)._executor.max_num_timeout == 3
