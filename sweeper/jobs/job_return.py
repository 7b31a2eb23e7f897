"""What a Hydra job ended with, through Hydra's public JobReturn interface."""
from __future__ import annotations

import contextlib
import io
from typing import Optional

from hydra.core.utils import JobReturn, JobStatus


def failure(returned: JobReturn) -> Optional[BaseException]:
    """The exception a failed job raised; None for a job that completed.

    JobReturn.return_value re-raises a failed job's exception (and writes a line to stderr, which the
    sweep's own failure line replaces)."""
    if returned.status != JobStatus.FAILED:
        return None
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            returned.return_value
        except BaseException as err:  # whatever the task raised, SystemExit included, as Hydra stored it
            return err
    raise AssertionError("a FAILED JobReturn whose return_value did not raise")
