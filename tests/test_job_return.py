"""A Hydra job's outcome through JobReturn's public interface (sweeper.jobs.job_return)."""
from hydra.core.utils import JobReturn, JobStatus

from sweeper.jobs.job_return import failure


def test_failure_is_the_jobs_exception_and_prints_nothing(capsys):
    err = RuntimeError("the store could not write the record")
    failed = JobReturn(overrides=["width=32"], status=JobStatus.FAILED)
    failed.return_value = err
    done = JobReturn(overrides=["width=64"], status=JobStatus.COMPLETED)
    done.return_value = {"key": "0123456789abcdef", "status": "ok"}
    assert failure(failed) is err
    assert failure(done) is None
    assert capsys.readouterr().err == ""
