"""Calling a tool from workflow code: one set of activity options for every tool, check and
compensation, and the call a cancel cannot lose.

    out = await call_tool(state, spec, step=3, args={"account": "ann", "amount": 5})
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from keel.workflows.contracts import ToolCall, ToolOutput, ToolSpec
    from keel.workflows.failures import local_outcome, retry_policy
    from keel.workflows.run_state import RunState

# A cancelled run compensates only once the in-flight call has stopped: with TRY_CANCEL a
# write still running could land after its compensation.
WAIT_FOR_IT = workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
# Runs that ended a write of unknown outcome before it was asked again replay as they ran.
ASK_AGAIN_PATCH = "keel-unknown-write-asked-again"


def start_call(spec: ToolSpec, call: ToolCall) -> asyncio.Task[ToolOutput]:
    """Start `spec`'s activity with `call`: its timeout, heartbeat and bounded retry policy,
    as a local activity when the tool is local (a quick read: ToolSpec.local)."""
    if spec.local:
        local = workflow.start_local_activity(
            spec.activity or spec.name,
            call,
            result_type=ToolOutput,
            start_to_close_timeout=spec.timeout,
            retry_policy=retry_policy(spec.retry),
            cancellation_type=WAIT_FOR_IT,
            # The step, for the timeline: a local activity's marker holds its id, not its input.
            activity_id=str(call.step),
        )
        return asyncio.create_task(local_outcome(local, spec.name))
    return workflow.start_activity(
        spec.activity or spec.name,
        call,
        result_type=ToolOutput,
        start_to_close_timeout=spec.timeout,
        heartbeat_timeout=spec.heartbeat,
        retry_policy=retry_policy(spec.retry),
        cancellation_type=WAIT_FOR_IT,
    )


async def call_tool(state: RunState, spec: ToolSpec, step: int, args: dict[str, Any]) -> ToolOutput:
    """Run one call of a tool (or check) for `step` and return what it did, even when the run
    is cancelled while the call is in flight."""
    ran = state.prefetched.pop(step, None)
    if ran is not None and ran.tool == spec.name and ran.args == args and spec.local:
        # The model call that chose this read ran it already (contracts.PrefetchPlan): its
        # output is in that call's recorded result, so a replay takes the same path.
        return ran.output
    call = ToolCall(
        run_id=workflow.info().workflow_id,
        step=step,
        args=args,
        idempotency_key=state.key(str(step)),
        grants=list(state.agent.grants) if spec.kind == "tool" else None,
        ceilings=list(state.run.ceilings) if spec.kind == "tool" else [],
        tool=spec.name if spec.activity else "",
    )
    handle = start_call(spec, call)
    try:
        # Shielded: a cancel of the run must not reach the call before we know whether it
        # completed. Its completion may arrive in the same activation as the cancel, and a
        # write that landed must be recorded (so it is compensated), never dropped.
        return await asyncio.shield(handle)
    except asyncio.CancelledError:
        await workflow.wait_condition(lambda: True)  # let this activation's results land
        if not handle.done():
            handle.cancel()  # still in flight: ask it to stop and wait for what it did
        # Its result if it completed (the run notices the cancel before its next call),
        # else the activity's cancellation error.
        try:
            return await handle
        except ActivityError as err:
            if not (unknown_write(spec, err) and workflow.patched(ASK_AGAIN_PATCH)):
                raise
            # Its worker died with the cancel pending: the server gave up on the call without
            # an answer, and the write may have landed. The same call again (the same key: a
            # write reports what it did) says, and the saga undoes what it did.
            workflow.logger.info(f"{spec.name}: outcome unknown after a cancel, asking again")
            return await start_call(spec, call)


def unknown_write(spec: ToolSpec, err: ActivityError) -> bool:
    """A write that timed out: it may or may not have landed."""
    return spec.effect == "write" and isinstance(err.cause, TimeoutError)
