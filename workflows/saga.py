"""Saga: compensations pushed as writes complete, run in reverse order when the plan unwinds.

    saga = Saga()
    out = await workflow.execute_activity("post_entry", call, ...)
    saga.push(SagaEntry(step=1, tool="post_entry", compensation="reverse_entry",
                        args=call.args, result=out.value))
    ...
    states = await saga.compensate(key_prefix=f"{workflow.info().workflow_id}")

Usable in any workflow, not only AgentWorkflow. A compensation is a write tool taking two
arguments: `args` (the original call's arguments) and `result` (what it returned). Each runs as
an activity with its own bounded retry policy and an idempotency key of its own, so a
compensation delivered twice undoes once. The stack is plain data (`entries`), so it lives in
durable plan state and survives continue-as-new.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from keel.shared.tracing import annotate, span
    from keel.workflows.contracts import (
        CompensationState,
        RetrySpec,
        SagaEntry,
        ToolCall,
        ToolSpec,
    )
    from keel.workflows.failures import attempts_made, describe_failure
    from keel.workflows.tool_calls import start_call

DEFAULT_COMPENSATION = ToolSpec(
    name="compensation",
    effect="write",
    retry=RetrySpec(max_attempts=5),
    timeout=timedelta(seconds=30),
)

# Decides what to do with a compensation that failed after its retries: "retry" or "skip".
OnFailure = Callable[[SagaEntry, CompensationState], Awaitable[str]]


class Saga:
    def __init__(self, entries: list[SagaEntry] | None = None) -> None:
        self.entries = entries if entries is not None else []

    def push(self, entry: SagaEntry) -> None:
        self.entries.append(entry)

    async def compensate(
        self,
        *,
        key_prefix: str,
        specs: dict[str, ToolSpec] | None = None,
        on_failure: OnFailure | None = None,
        record: Callable[[CompensationState], None] | None = None,
    ) -> list[CompensationState]:
        """Run every compensation, newest first; pops each entry once it is settled."""
        states: list[CompensationState] = []
        while self.entries:
            entry = self.entries[-1]
            spec = (specs or {}).get(entry.compensation, DEFAULT_COMPENSATION)
            with span("compensation", step=entry.step, tool=entry.compensation) as current:
                while True:
                    state = await self._undo(entry, spec, key_prefix)
                    if state.status == "done" or on_failure is None:
                        break
                    if await on_failure(entry, state) != "retry":
                        state.status = "skipped"
                        break
                annotate(current, outcome=state.status, attempts=state.attempts)
            self.entries.pop()
            states.append(state)
            if record is not None:
                record(state)
        return states

    async def _undo(self, entry: SagaEntry, spec: ToolSpec, key_prefix: str) -> CompensationState:
        call = ToolCall(
            run_id=workflow.info().workflow_id,
            step=entry.step,
            args={"args": entry.args, "result": entry.result},
            idempotency_key=entry.undo_key or f"{key_prefix}:{entry.step}:undo",
        )
        state = CompensationState(
            step=entry.step, tool=entry.tool, compensation=entry.compensation, status="done"
        )
        # The same activity options as every tool call (a cancel waits for the call to stop),
        # always as a regular activity, under the compensation's own name.
        undo = spec.model_copy(update={"name": entry.compensation, "local": False})
        try:
            out = await start_call(undo, call)
            state.attempts = out.attempt
        except ActivityError as err:
            state.status = "failed"
            state.attempts = attempts_made(err, spec)
            state.error = describe_failure(err)
        return state
