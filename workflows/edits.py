"""What a human may change in a decision, checked before the decision is accepted: edited
arguments fit the tool's schema and the payload bound; new budget limits only raise limits.

    await check_edit(report, decision)   # raises ApplicationError (non-retryable) if not
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from keel.shared.bounds import MAX_ARGS_BYTES, json_size
    from keel.workflows.budgets import extended
    from keel.workflows.contracts import ArgsCheck, Decision, RunReport
    from keel.workflows.planning import KEEL_ACTIVITY_TIMEOUT, KEEL_RETRY


async def check_edit(report: RunReport, decision: Decision) -> None:
    pending = report.pending
    if decision.choice == "extend" and decision.args:
        extended(report.budget, decision.args)  # raises ApplicationError if invalid
        return
    if decision.choice != "edit" or decision.args is None or pending is None:
        return
    if (size := json_size(decision.args)) > MAX_ARGS_BYTES:
        raise ApplicationError(
            f"edited arguments are {size} bytes, over the {MAX_ARGS_BYTES} limit: pass large "
            "data by reference",
            type="InvalidEdit",
            non_retryable=True,
        )
    problems = await workflow.execute_activity(
        "keel.check_args",
        ArgsCheck(tool=pending.tool, args=decision.args),
        result_type=list[str],
        start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
        retry_policy=KEEL_RETRY,
    )
    if problems:
        raise ApplicationError(
            f"edited arguments do not fit {pending.tool}: {'; '.join(problems)}",
            type="InvalidEdit",
            non_retryable=True,
        )
