"""How a run ended, read from the server: for the client (keel/runs.py) and for activities that
look at other runs (a job's gate reads the jobs it is blocked by).

    report = await outcome(handle)   # DONE: the result; NOT_DONE: the report its failure carries
"""

from __future__ import annotations

from typing import Any

from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError

from keel.workflows.contracts import NOT_DONE_FAILURE, RunReport


def reported(err: WorkflowFailureError) -> RunReport | None:
    """The report a NOT_DONE run failed its workflow with (None for any other failure)."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type == NOT_DONE_FAILURE and cause.details:
        return RunReport.model_validate(cause.details[0])
    return None


async def outcome(handle: WorkflowHandle[Any, RunReport]) -> RunReport:
    """Wait for the run's end and return its report: a DONE run completes its workflow with it,
    a NOT_DONE one fails its workflow carrying it. Any other failure (a run failed on a
    determinism violation, terminated, timed out) raises as temporalio raises it."""
    try:
        return await handle.result()
    except WorkflowFailureError as err:
        report = reported(err)
        if report is None:
            raise
        return report
