"""The quick reads a model's answer chose, run by the model call itself when it is a local
activity (contracts.PrefetchPlan): the answer and the reads' outputs come back in one local
activity, one marker, instead of two local activities a step.

    reply = reply.model_copy(update={"prefetched": await prefetch(plan, reply, catalog.tools)})

Only the leading calls of the answer, up to the first that is not a read the workflow named
(what follows might not be numbered as the workflow numbers its steps); each is checked
against the grants and ceilings first and runs once (attempt 1), as many at once as the
agent's calls may run together. A read that fails, or does not finish within PREFETCH_WAIT,
runs as it always has: its own local activity, under its own retry policy.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

from keel.activities.tool import Tool, run_with_model_call
from keel.shared.authz import authorize, within_ceilings
from keel.shared.bounds import MAX_ARGS_BYTES, json_size
from keel.workflows.contracts import (
    ModelReply,
    PrefetchedCall,
    PrefetchPlan,
    ToolCall,
    ToolOutput,
)

# What the reply may carry of read outputs (each output is small or stored by reference
# already): the rest run as their own local activities.
PREFETCHED_BYTES = 64 * 1024
# How long the reads of one answer may take here. A read still running then is left to finish
# on its own (a read is safe to run twice) and runs again as its own local activity.
PREFETCH_WAIT = 5.0


async def prefetch(
    plan: PrefetchPlan, reply: ModelReply, tools: Mapping[str, Tool]
) -> tuple[PrefetchedCall, ...]:
    calls: list[tuple[Tool, ToolCall]] = []
    for offset, request in enumerate(reply.tool_calls):
        tool = tools.get(request.name)
        step = plan.first_step + offset
        if tool is None or (call := _eligible_call(plan, tool, request.arguments, step)) is None:
            break  # what follows may not be numbered as the workflow numbers its steps
        if plan.most is not None and len(calls) >= plan.most:
            break  # the budget refuses the rest
        calls.append((tool, call))
    # As many at once as the agent lets its calls run together (one by default).
    slots = asyncio.Semaphore(plan.max_parallel)

    async def one(tool: Tool, call: ToolCall) -> ToolOutput:
        async with slots:
            return await run_with_model_call(tool, call)

    tasks = [asyncio.ensure_future(one(tool, call)) for tool, call in calls]
    if not tasks:
        return ()
    finished, running = await asyncio.wait(tasks, timeout=PREFETCH_WAIT)
    for task in running:
        task.add_done_callback(_ignore_outcome)  # left to finish alone: a read is safe
    done: list[PrefetchedCall] = []
    carried = 0
    for (tool, call), task in zip(calls, tasks, strict=True):
        # A failed read is left out: it runs again as its own local activity, under its
        # retry policy. The others keep their outputs: each is matched to its own step.
        if task not in finished or task.exception() is not None:
            continue
        output = task.result()
        size = json_size(output.model_dump(mode="json"))
        if carried + size > PREFETCHED_BYTES:
            break
        carried += size
        done.append(
            PrefetchedCall(step=call.step, tool=tool.spec.name, args=call.args, output=output)
        )
    return tuple(done)


def _eligible_call(plan: PrefetchPlan, tool: Tool, arguments: str, step: int) -> ToolCall | None:
    """The call the workflow would make for this step, if it is a quick read it allows."""
    spec = tool.spec
    if spec.name not in plan.tools or not spec.runs_with_model_call:
        return None  # the worker's own declaration decides too
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        return None
    if not isinstance(args, dict) or json_size(args) > MAX_ARGS_BYTES:
        return None
    if authorize(spec, args, plan.grants) or within_ceilings(spec, args, plan.ceilings):
        return None
    return ToolCall(
        run_id=plan.run_id,
        step=step,
        args=args,
        idempotency_key=f"{plan.key_prefix}{step}",
        grants=list(plan.grants),
        ceilings=list(plan.ceilings),
    )


def _ignore_outcome(task: asyncio.Task[ToolOutput]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a read left to finish alone is not an error to log
