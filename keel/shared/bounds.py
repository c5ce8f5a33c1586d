"""Bounds on what a run produces: every payload it hands the server fits, by construction.

    fitted = fit(report.with_newest_steps(), keep_saga=False)  # None: even the slimmest won't

Temporal refuses a payload over 2 MB, and a workflow task that produces one fails again on
every retry: the run would hang. So the arguments of one call and of a whole plan are limited
where they enter (MAX_ARGS_BYTES, MAX_PLAN_ARGS_BYTES), and the report, the query result and the
carry of a continuation are measured before they leave: over PAYLOAD_LIMIT, the large arguments
and results of settled steps give way to a note of their size, then the oldest log entries; a
run whose state still does not fit ends NOT_DONE and says why. Pure: the workflow and the
worker's check of a plan both use it.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from keel.workflows.contracts import CARRY_KEPT, RunReport, SagaEntry, StepState

# One call's arguments travel in the history and stay in the run's state (the report, the saga).
MAX_ARGS_BYTES = 256 * 1024
# A plan's arguments all at once (steps and acceptance checks).
MAX_PLAN_ARGS_BYTES = 512 * 1024
# A report, query result or carry, with room under Temporal's 2 MB for the rest of the
# payload (metadata, an encrypting codec's overhead).
PAYLOAD_LIMIT = 1_500_000
# Settled steps' arguments and results above this are replaced by their size when a report
# would not fit otherwise.
KEPT_VALUE_BYTES = 1024


def json_size(value: Any) -> int:
    """Bytes of `value` as JSON (a pydantic model as the data converter writes it)."""
    if isinstance(value, BaseModel):
        return len(value.model_dump_json())
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())


def omitted(size: int) -> str:
    return f"[{size} bytes: too large to keep in the run's state]"


def fit(report: RunReport, *, keep_saga: bool, keep_audit: bool = False) -> RunReport | None:
    """`report` if it fits PAYLOAD_LIMIT; else slimmed until it does (see the docstring);
    None when it cannot. `keep_saga` keeps the compensations' arguments (a run that goes on may
    still need them); `keep_audit` keeps every audit entry (a carry is the trail's record)."""
    if json_size(report) <= PAYLOAD_LIMIT:
        return report
    slim = report.model_copy(
        update={
            "steps": [_slim_step(s) for s in report.steps],
            "saga": report.saga if keep_saga else [_slim_entry(e) for e in report.saga],
        }
    )
    if json_size(slim) <= PAYLOAD_LIMIT:
        return slim
    cut_progress = max(0, len(slim.progress) - CARRY_KEPT)
    cut_audit = 0 if keep_audit else max(0, len(slim.audit) - CARRY_KEPT)
    slimmer = slim.model_copy(
        update={
            "progress": slim.progress[cut_progress:],
            "progress_dropped": slim.progress_dropped + cut_progress,
            "audit": slim.audit[cut_audit:],
            "audit_dropped": slim.audit_dropped + cut_audit,
            "model_calls": slim.model_calls[-CARRY_KEPT:],
        }
    )
    return slimmer if json_size(slimmer) <= PAYLOAD_LIMIT else None


def _slim_step(step: StepState) -> StepState:
    if not (step.done or step.skipped):
        return step  # a step still to run needs its arguments
    changes = _large_values(step.args, step.result)
    return step.model_copy(update=changes) if changes else step


def _slim_entry(entry: SagaEntry) -> SagaEntry:
    changes = _large_values(entry.args, entry.result)
    return entry.model_copy(update=changes) if changes else entry


def _large_values(args: dict[str, Any], result: Any) -> dict[str, Any]:
    """Replacements for arguments and a result over KEPT_VALUE_BYTES: a note of their size."""
    changes: dict[str, Any] = {}
    if (size := json_size(args)) > KEPT_VALUE_BYTES:
        changes["args"] = {"omitted": omitted(size)}
    if (size := json_size(result)) > KEPT_VALUE_BYTES:
        changes["result"] = omitted(size)
    return changes
