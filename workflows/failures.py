"""How a failed activity is described in a report, and a RetrySpec as temporalio's RetryPolicy.

Pure helpers shared by the agent workflow and the saga; workflow code imports them through
``imports_passed_through``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    FailureError,
    RetryState,
    TimeoutError,
    is_cancelled_exception,
)

from keel.workflows.contracts import NOT_DONE_FAILURE, RetrySpec, RunReport, ToolSpec


def retry_policy(spec: RetrySpec) -> RetryPolicy:
    return RetryPolicy(
        maximum_attempts=spec.max_attempts,
        initial_interval=spec.initial_interval,
        backoff_coefficient=spec.backoff_coefficient,
        maximum_interval=spec.max_interval,
        non_retryable_error_types=list(spec.non_retryable_error_types),
    )


T = TypeVar("T")


async def local_outcome(call: Awaitable[T], activity_type: str) -> T:
    """Await a local activity and raise its failure as an activity's failure is raised.

    temporalio raises a failed local activity's error bare (the ApplicationError or
    TimeoutError of its last attempt), not wrapped in an ActivityError: every `except
    ActivityError` of the workflow would miss it and the error would fail the whole run."""
    try:
        return await call
    except FailureError as err:
        if isinstance(err, ActivityError) or is_cancelled_exception(err):
            raise
        gave_up = (
            RetryState.NON_RETRYABLE_FAILURE
            if isinstance(err, ApplicationError) and err.non_retryable
            else RetryState.MAXIMUM_ATTEMPTS_REACHED
        )
        raise ActivityError(
            f"local activity {activity_type} failed",
            scheduled_event_id=0,
            started_event_id=0,
            identity="",
            activity_type=activity_type,
            activity_id="",
            retry_state=gave_up,
        ) from err


def describe_failure(err: BaseException) -> str:
    """The innermost cause of an activity failure, in one line."""
    cause = err.cause if isinstance(err, ActivityError) and err.cause else err
    if isinstance(cause, ApplicationError):
        return f"{cause.type or 'Error'}: {cause.message}"
    if isinstance(cause, TimeoutError):
        return f"timed out ({cause.type.name.lower() if cause.type else 'timeout'})"
    return f"{type(cause).__name__}: {cause}"


def attempts_made(err: ActivityError, spec: ToolSpec) -> int:
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.details:
        detail = cause.details[0]
        if isinstance(detail, dict) and isinstance(detail.get("attempt"), int):
            return detail["attempt"]
    if err.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED:
        return spec.retry.max_attempts
    return 1


class Unwind(Exception):
    """The run stops here: its completed writes are compensated and it ends NOT_DONE with this
    message as the reason (a spent budget, a rejected step, a model that cannot go on, ...)."""


def child_report(err: ChildWorkflowError, run_id: str, agent: str, goal: str) -> RunReport:
    """The report of a child run that did not complete: its own (a NOT_DONE run fails its
    workflow carrying it), or one saying how it ended (failed otherwise, terminated, timed out)."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type == NOT_DONE_FAILURE and cause.details:
        return RunReport.model_validate(cause.details[0])
    why = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
    return RunReport(run_id=run_id, agent=agent, goal=goal, status="NOT_DONE", reason=why)
