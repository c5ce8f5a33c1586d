"""Following a run's live events from a client: what `starter.py watch`, Run.events() and the
Server-Sent-Events bridge (`python -m keel.live`) read.

    async for event in follow(client, "pay-1", since=0):   # resumes from any offset
        print(event.offset, event.kind, event.message)      # ends after the "final" event

Events come from the run's `events` query, which costs no history: the run keeps them in its
state (rebuilt the same on replay, carried across continue-as-new), so following from an
offset after a disconnect, a worker crash or a continuation sees every event once. While no
worker answers (one crashed, none runs) the client waits and asks again. Events older than the
run keeps (its newest 256 KB) come back as one "gap" event saying which are missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.service import RPCError

from keel.runs import QUERY_TIMEOUT, get_report, run_must_exist
from keel.workflows.agent import AgentWorkflow
from keel.workflows.contracts import RunEvent

POLL_S = 0.25  # how often a follower asks while nothing new has happened
RETRY_S = 1.0  # how long it waits when no worker answered


async def follow(
    client: Client, run_id: str, since: int = 0, poll: float = POLL_S
) -> AsyncIterator[RunEvent]:
    """The run's events from offset `since` on, live; the last one is its "final" event."""
    handle = client.get_workflow_handle(run_id)
    while True:
        try:
            page = await handle.query(AgentWorkflow.events, since, rpc_timeout=QUERY_TIMEOUT)
        except (RPCError, WorkflowQueryFailedError):
            with run_must_exist(run_id):
                desc = await handle.describe()
            if desc.status == WorkflowExecutionStatus.RUNNING:
                await asyncio.sleep(RETRY_S)  # a worker will come back and rebuild the run
                continue
            # Closed, and no worker to replay it for a query: the report has the outcome.
            report = await get_report(client, run_id)
            yield RunEvent(
                offset=since,
                at=desc.close_time or desc.start_time,
                kind="final",
                message=f"{report.status}: {report.reason}",
                outcome=report.status,
                data={"from": "report"},
            )
            return
        if page.first_kept > since:
            yield RunEvent(
                offset=since,
                at=datetime.now(UTC),  # the client's own event: its own clock
                kind="gap",
                message=f"events {since} to {page.first_kept - 1} are no longer kept by the "
                "run (it keeps its newest 256 KB); starter.py show has the whole story",
                data={"missing_to": page.first_kept - 1},
            )
        for event in page.events:
            yield event
            if event.kind == "final":
                return
        since = page.next_offset
        if not page.events:
            await asyncio.sleep(poll)
