"""Deciding for a waiting run, and listing the runs that wait, from scripts.

    outcome = await decide(client, "pay-1", choice="approve", approver="me")   # by update
    waiting = await pending_runs(client)                                       # [(run_id, request)]

A decision names the request it answers and, for an approval, the hash of the exact call; both
are read from the run's memo, so deciding needs no worker when sent as a signal. By update the
caller learns at once whether the run accepted it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from keel.activities.settings import env_number
from keel.runs import run_must_exist, status_attribute_registered
from keel.shared.errors import DecisionNotConfirmed, DecisionRefused, StatusAttributeMissing
from keel.workflows.agent import AgentWorkflow
from keel.workflows.contracts import STATUS_ATTRIBUTE, Choice, Decision, PendingRequest


def update_timeout() -> float:
    """Seconds to wait for a worker to answer a decision (KEEL_DECISION_TIMEOUT, default 30)."""
    return env_number("KEEL_DECISION_TIMEOUT", 30.0)


async def waiting_run(client: Client, run_id: str) -> tuple[str, PendingRequest | None]:
    """The run that waits for a decision sent to `run_id`: itself, or the run it delegated to
    (followed down the chain of delegations, from the memo: no worker needed)."""
    for _ in range(MAX_CHAIN):
        with run_must_exist(run_id):
            desc = await client.get_workflow_handle(run_id).describe()
        memo = await desc.memo()
        if memo.get("pending"):
            return run_id, PendingRequest.model_validate(memo["pending"])
        delegate = memo.get("delegate")
        if not isinstance(delegate, str):
            return run_id, None
        run_id = delegate
    return run_id, None


MAX_CHAIN = 20  # delegations followed at most


async def decide(
    client: Client,
    run_id: str,
    *,
    choice: Choice,
    request_id: str | None = None,
    reason: str = "",
    args: dict[str, Any] | None = None,
    approver: str = "",
    by_signal: bool = False,
) -> str:
    """Send a decision; returns what the run answered. Raises DecisionRefused when the run
    refused it, DecisionNotConfirmed when nothing answered (always so for a signal)."""
    run_id, pending = await waiting_run(client, run_id)
    if request_id is None:
        if pending is None:
            raise DecisionRefused(f"run {run_id!r} is not waiting on a decision")
        request_id = pending.request_id
    bound = pending is not None and pending.request_id == request_id and choice == "approve"
    decision = Decision(
        request_id=request_id,
        choice=choice,
        reason=reason,
        args=args,
        args_hash=pending.args_hash if bound and pending else None,
        approver=approver,
    )
    handle = client.get_workflow_handle(run_id)
    if by_signal:
        await handle.signal(AgentWorkflow.decide_signal, decision)
        raise DecisionNotConfirmed(
            f"sent {choice} for {request_id} as a signal, not confirmed: it applies when a "
            "worker runs, unless the run refuses it (see status and audit)"
        )
    wait = update_timeout()
    try:
        return await asyncio.wait_for(handle.execute_update(AgentWorkflow.decide, decision), wait)
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        text = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        raise DecisionRefused(text) from err
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
        # The server may still hold the update for a worker that comes back; say so.
        raise DecisionNotConfirmed(
            f"not confirmed: no worker answered within {wait:g} s; the decision may still apply "
            "when a worker returns (check with status)"
        ) from err
    except RPCError as err:
        if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
            raise DecisionRefused(f"run {run_id!r} has finished; nothing waits") from err
        raise


async def pending_runs(client: Client) -> list[tuple[str, PendingRequest]]:
    """Every run in the namespace waiting on a human, oldest request first."""
    if not await status_attribute_registered(client):
        raise StatusAttributeMissing(
            f"the namespace has no {STATUS_ATTRIBUTE} search attribute, so waiting runs cannot "
            f"be listed; register it: temporal operator search-attribute create "
            f"--name {STATUS_ATTRIBUTE} --type Keyword (./temporal-dev up does it)"
        )
    query = f'{STATUS_ATTRIBUTE} = "WAITING_ON_YOU" AND ExecutionStatus = "Running"'
    found: list[tuple[str, PendingRequest]] = []
    async for execution in client.list_workflows(query):
        memo = await execution.memo()
        if memo.get("pending"):
            found.append((execution.id, PendingRequest.model_validate(memo["pending"])))
    return sorted(found, key=lambda item: item[1].asked_at)
