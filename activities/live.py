"""Publishing an activity's live events to its run: a retried tool attempt, the model's text as
it streams. Best effort by design: the run's own events (step done, model call) carry the
outcome, so a lost publish loses a progress hint, never a result, and never fails the call.

    async with Publisher() as live:         # in an activity
        await live.add(ActivityEvent(kind="model_text", message=delta))

Events go to the run by the `keel.activity_events` signal in batches (one signal every FLUSH_S
or FLUSH_CHARS of text, never one per token), so the history grows by batches; each batch is
numbered so the run drops one it already has.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from types import TracebackType

from temporalio import activity
from temporalio.service import RPCError

from keel.workflows.contracts import ActivityEvent, ActivityEvents

FLUSH_S = 0.25
FLUSH_CHARS = 1024
SIGNAL_TIMEOUT = timedelta(seconds=2)
log = logging.getLogger("keel.live")


class Publisher:
    def __init__(self) -> None:
        info = activity.info()
        # A local activity runs inside its run's workflow task: a signal from it lands in that
        # task, and if the task also ends the run the server refuses the completion (new
        # events), the task is retried with the activity, which signals again, forever. Its
        # run sees its outcome within the same task anyway: nothing to publish.
        self.workflow_id = None if info.is_local else info.workflow_id
        self.run_id = info.workflow_run_id
        self.source = f"{info.activity_id}:{info.attempt}"
        self.seq = 0
        self.pending: list[ActivityEvent] = []
        self.chars = 0
        self.flushed_at = time.monotonic()

    async def add(self, event: ActivityEvent) -> None:
        last = self.pending[-1] if self.pending else None
        if last is not None and last.kind == event.kind == "model_text":
            # Pieces of text in one batch are one event: the run's stream holds batches.
            self.pending[-1] = last.model_copy(update={"message": last.message + event.message})
        else:
            self.pending.append(event)
        self.chars += len(event.message)
        if self.chars >= FLUSH_CHARS or time.monotonic() - self.flushed_at >= FLUSH_S:
            await self.flush()

    async def flush(self) -> None:
        if not self.pending or self.workflow_id is None:
            return
        self.seq += 1
        batch = ActivityEvents(source=self.source, seq=self.seq, events=self.pending)
        self.pending, self.chars, self.flushed_at = [], 0, time.monotonic()
        try:
            handle = activity.client().get_workflow_handle(self.workflow_id, run_id=self.run_id)
            await handle.signal("keel.activity_events", batch, rpc_timeout=SIGNAL_TIMEOUT)
        except (RPCError, RuntimeError) as err:  # the run closed, the server is away
            log.debug("live events not published: %s", err)

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.flush()


async def publish(event: ActivityEvent) -> None:
    """One event at once (a retried attempt): a batch of one."""
    async with Publisher() as live:
        await live.add(event)
