"""The baseline: a plain temporalio workflow calling a Keel tool's activity N times in a row.

Kept in its own module because the workflow sandbox re-imports the module of a workflow.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from keel.workflows.contracts import ToolCall, ToolOutput


@workflow.defn(name="RawToolLoop")
class RawToolLoop:
    @workflow.run
    async def run(self, tool: str, n: int) -> int:
        info = workflow.info()
        for step in range(1, n + 1):
            await workflow.execute_activity(
                tool,
                ToolCall(
                    run_id=info.workflow_id,
                    step=step,
                    args={"i": step},
                    idempotency_key=f"{info.workflow_id}:{step}",
                ),
                result_type=ToolOutput,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        return n
