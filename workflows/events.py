"""EventLog: a run's live event stream, kept in the workflow and read by the `events` query.

    state.events.add("model_call", "model gpt answered", data={...})
    page = state.events.since(offset)           # what a client asks for, at no history cost

Events are written by workflow code (and by the handlers of signals and updates, which are in
the history), so a replay after a worker crash rebuilds the same events at the same offsets:
a client that resumes from its offset sees nothing twice and misses nothing. Reading costs no
history event (a query), and only the newest EVENTS_KEPT_BYTES are kept (the newest
EVENTS_CARRIED_BYTES of them carried across continue-as-new), so the stream is bounded by
construction. Pure: its clock is given (the
workflow's, workflow.now).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from datetime import datetime
from typing import Any

from keel.shared.bounds import json_size
from keel.workflows.contracts import (
    EVENT_TEXT_CHARS,
    EVENTS_KEPT_BYTES,
    EventKind,
    EventPage,
    RunEvent,
    RunStatus,
)

PAGE_EVENTS = 200  # one query answer at most (each event is bounded: far below 2 MB)


class EventLog:
    def __init__(
        self,
        clock: Callable[[], datetime],
        carried: list[RunEvent] | None = None,
        next_offset: int = 0,
    ) -> None:
        self.clock = clock
        # Lists, not deques: a deque's first block is ~0.6 KB, and a run waiting on a human
        # keeps its log for days; dropping from the front of a few hundred is cheap.
        self.kept: list[RunEvent] = list(carried or ())
        self.sizes: list[int] = [json_size(e) for e in self.kept]
        self.bytes = sum(self.sizes)
        self.next_offset = next_offset

    def add(
        self,
        kind: EventKind,
        message: str,
        *,
        step: int | None = None,
        tool: str | None = None,
        outcome: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> RunEvent:
        event = RunEvent(
            offset=self.next_offset,
            at=self.clock(),
            kind=kind,
            message=message[:EVENT_TEXT_CHARS],
            step=step,
            tool=tool,
            outcome=outcome,
            data=data or {},
        )
        self.next_offset += 1
        size = json_size(event)
        self.kept.append(event)
        self.sizes.append(size)
        self.bytes += size
        while self.bytes > EVENTS_KEPT_BYTES and len(self.kept) > 1:
            del self.kept[0]
            self.bytes -= self.sizes.pop(0)
        return event

    def newest(self, limit: int) -> list[RunEvent]:
        """The newest kept events within `limit` bytes (at least the newest one)."""
        taken, total = 0, 0
        for size in reversed(self.sizes):
            if taken and total + size > limit:
                break
            taken, total = taken + 1, total + size
        return self.kept[len(self.kept) - taken :]

    @property
    def first_kept(self) -> int:
        return self.kept[0].offset if self.kept else self.next_offset

    def since(self, offset: int, status: RunStatus) -> EventPage:
        """The kept events from `offset` on (at most PAGE_EVENTS)."""
        start = bisect.bisect_left([e.offset for e in self.kept], offset)
        page = self.kept[start : start + PAGE_EVENTS]
        following = page[-1].offset + 1 if page else max(offset, self.first_kept)
        return EventPage(
            events=page,
            next_offset=min(following, self.next_offset),
            first_kept=self.first_kept,
            status=status,
        )
