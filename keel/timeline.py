"""A run's timeline, read from its event history: what ran when, how many attempts, how long,
what waited on whom, and how it ended. It works on finished runs and on runs still going (it
shows what has happened so far), and needs no worker.

    entries = await timeline(client, "pay-1")
    print(format_timeline(entries))
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from keel.runs import segment_histories
from keel.workflows.contracts import NOT_DONE_FAILURE, StepState

Kind = Literal["run", "plan", "model", "step", "check", "compensation", "keel", "wait", "decision"]
E = EventType


class TimelineEntry(BaseModel):
    offset_s: float  # from the run's start
    kind: Kind
    name: str
    step: int | None = None
    attempts: int = 0
    duration_s: float | None = None  # None while it is still going
    outcome: str = "running"
    detail: str = ""


def _json(payloads: Payloads) -> Any:
    """The first payload as JSON (Keel's converter writes JSON), or None."""
    try:
        return json.loads(payloads.payloads[0].data) if payloads.payloads else None
    except (ValueError, IndexError):
        return None


def _seconds(stamp: Any) -> float:
    """A protobuf timestamp as JSON ({"seconds": ..., "nanos": ...}) in seconds; 0 if absent."""
    if not isinstance(stamp, dict):
        return 0.0
    return float(stamp.get("seconds", 0)) + float(stamp.get("nanos", 0)) / 1e9


def _kind(activity: str, call: Any) -> tuple[Kind, int | None]:
    if activity in ("keel.propose_plan", "keel.prepare_plan"):
        return "plan", None
    if activity == "keel.model_call":
        return "model", None
    if activity.startswith("keel."):
        return "keel", None
    if not isinstance(call, dict):
        return "step", None
    step = call.get("step")
    if ":saga" in str(call.get("idempotency_key", "")):
        return "compensation", step
    if isinstance(step, int) and step < 0:
        return "check", None
    return "step", step


# How an activity ended: the event's attributes field and the outcome it means.
_ACTIVITY_ENDS = {
    E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: ("activity_task_completed_event_attributes", "ok"),
    E.EVENT_TYPE_ACTIVITY_TASK_FAILED: ("activity_task_failed_event_attributes", "failed"),
    E.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: ("activity_task_timed_out_event_attributes", "timed out"),
    E.EVENT_TYPE_ACTIVITY_TASK_CANCELED: ("activity_task_canceled_event_attributes", "cancelled"),
}


class _Builder:
    def __init__(self, start: datetime) -> None:
        self.start = start
        self.entries: list[TimelineEntry] = []
        self.activities: dict[int, TimelineEntry] = {}
        self.timers: dict[str, TimelineEntry] = {}
        self.write_tools: set[str] | None = None  # from the worker's check of the plan

    def learn_tools(self, prepared: Any) -> None:
        """Which tools write, from the worker's check of the plan (a PreparedPlan as JSON:
        keel.prepare_plan's result, or the one keel.resolve_agent returns with the agent)."""
        tools = prepared.get("tools") if isinstance(prepared, dict) else None
        if isinstance(tools, dict):
            found = {
                n for n, t in tools.items() if isinstance(t, dict) and t.get("effect") == "write"
            }
            self.write_tools = (self.write_tools or set()) | found

    def at(self, event: HistoryEvent) -> float:
        return (event.event_time.ToDatetime() - self.start).total_seconds()

    def add(self, event: HistoryEvent, **fields: Any) -> TimelineEntry:
        entry = TimelineEntry(offset_s=round(self.at(event), 3), **fields)
        self.entries.append(entry)
        return entry

    def close(
        self, entry: TimelineEntry, event: HistoryEvent, outcome: str, detail: str = ""
    ) -> None:
        entry.duration_s = round(self.at(event) - entry.offset_s, 3)
        entry.outcome, entry.detail = outcome, detail or entry.detail

    def feed(self, event: HistoryEvent) -> None:
        t = event.event_type
        if t == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            self._scheduled(event)
        elif t == E.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            if entry := self.activities.get(started.scheduled_event_id):
                entry.attempts = started.attempt
        elif t in _ACTIVITY_ENDS:
            self._activity_end(event, *_ACTIVITY_ENDS[t])
        elif t == E.EVENT_TYPE_MARKER_RECORDED:
            self._local_activity(event)
        elif t in (
            E.EVENT_TYPE_TIMER_STARTED,
            E.EVENT_TYPE_TIMER_FIRED,
            E.EVENT_TYPE_TIMER_CANCELED,
        ):
            self._timer(event)
        elif t == E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            request = event.workflow_execution_update_accepted_event_attributes.accepted_request
            if request.input.name != "admission":  # the starter's wait, not a decision
                self._decision(event, request.input.name, _json(request.input.args))
        elif t == E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            signal = event.workflow_execution_signaled_event_attributes
            self._decision(event, signal.signal_name, _json(signal.input))
        elif t == E.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED:
            self.add(event, kind="decision", name="cancel requested", outcome="ok", duration_s=0)
        else:
            self._end(event)

    def _scheduled(self, event: HistoryEvent) -> None:
        scheduled = event.activity_task_scheduled_event_attributes
        call = _json(scheduled.input)
        kind, step = _kind(scheduled.activity_type.name, call)
        model = call.get("model", {}).get("model") if isinstance(call, dict) else None
        detail = f"model {model}" if kind == "model" and model else ""
        self.activities[event.event_id] = self.add(
            event, kind=kind, name=scheduled.activity_type.name, step=step, detail=detail
        )

    def _activity_end(self, event: HistoryEvent, field: str, outcome: str) -> None:
        ended = getattr(event, field)
        entry = self.activities.get(ended.scheduled_event_id)
        if entry is None:
            return
        failed = outcome in ("failed", "timed out")
        self.close(entry, event, outcome, ended.failure.message if failed else "")
        if outcome == "ok" and entry.name == "keel.prepare_plan":
            self.learn_tools(_json(ended.result))

    def _timer(self, event: HistoryEvent) -> None:
        t = event.event_type
        if t == E.EVENT_TYPE_TIMER_STARTED:
            started = event.timer_started_event_attributes
            limit = started.start_to_fire_timeout.ToTimedelta()
            self.timers[started.timer_id] = self.add(
                event, kind="wait", name="waiting (deadline or reminder)", detail=f"up to {limit}"
            )
        elif t == E.EVENT_TYPE_TIMER_FIRED:
            if entry := self.timers.get(event.timer_fired_event_attributes.timer_id):
                self.close(entry, event, "time passed")
        elif entry := self.timers.get(event.timer_canceled_event_attributes.timer_id):
            self.close(entry, event, "answered")

    def _local_activity(self, event: HistoryEvent) -> None:
        """A local activity (a local tool, a local model, the worker's check of the plan) is
        one marker, recorded once it has finished; its arguments are not in the history."""
        a = event.marker_recorded_event_attributes
        if a.marker_name != "core_local_activity" or "data" not in a.details:
            return
        data = _json(a.details["data"])
        if not isinstance(data, dict):
            return
        name = str(data.get("activity_type", "local activity"))
        # A local tool call's activity id is its step (workflows/tool_calls.start_call).
        step = str(data.get("activity_id", ""))
        call = {"step": int(step)} if step.lstrip("-").isdigit() else None
        kind, index = _kind(name, call)
        entry = self.add(
            event, kind=kind, name=f"{name} (local)", step=index, attempts=data.get("attempt", 1)
        )
        took = _seconds(data.get("complete_time")) - _seconds(data.get("original_schedule_time"))
        failed = a.HasField("failure")
        entry.duration_s = round(max(took, 0.0), 3)
        entry.outcome, entry.detail = ("failed", a.failure.message) if failed else ("ok", "")
        if name == "keel.prepare_plan" and "result" in a.details:
            self.learn_tools(_json(a.details["result"]))
        if name == "keel.resolve_agent" and "result" in a.details:
            resolved = _json(a.details["result"])  # the plan's check came with the agent
            if isinstance(resolved, dict) and resolved.get("prepared") is not None:
                self.learn_tools(resolved["prepared"])
        if name == "keel.model_call" and "result" in a.details:
            self._prefetched(event, _json(a.details["result"]), entry.duration_s)

    def _prefetched(self, event: HistoryEvent, reply: Any, took: float) -> None:
        """The quick reads a local model call ran itself (contracts.PrefetchPlan): in its
        marker's result, timed with the call."""
        ran = reply.get("prefetched", []) if isinstance(reply, dict) else []
        for call in ran:
            tool, step = str(call.get("tool", "tool")), call.get("step")
            entry = self.add(
                event,
                kind="step",
                name=f"{tool} (with the model call)",
                step=step if isinstance(step, int) else None,
                attempts=1,
            )
            entry.duration_s, entry.outcome = took, "ok"

    def _decision(self, event: HistoryEvent, name: str, value: Any) -> None:
        detail = ""
        if isinstance(value, dict):
            who = f" by {value['approver']}" if value.get("approver") else ""
            detail = f"{value.get('choice')} {value.get('request_id')}{who}"
        self.add(event, kind="decision", name=name, outcome="received", duration_s=0, detail=detail)

    def _end(self, event: HistoryEvent) -> None:
        t = event.event_type
        failure = event.workflow_execution_failed_event_attributes.failure
        not_done = (
            t == E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED
            and failure.application_failure_info.type == NOT_DONE_FAILURE
        )
        if t == E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED or not_done:
            report = _json(
                failure.application_failure_info.details
                if not_done
                else event.workflow_execution_completed_event_attributes.result
            )
            status = report.get("status", "?") if isinstance(report, dict) else "?"
            reason = report.get("reason", "") if isinstance(report, dict) else ""
            self.add(
                event, kind="run", name="finished", outcome=status, detail=reason, duration_s=0
            )
        elif t in (
            E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
            E.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
            E.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
            E.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
            E.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
        ):
            name = EventType.Name(t).removeprefix("EVENT_TYPE_WORKFLOW_EXECUTION_").lower()
            detail = ""
            if t == E.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
                detail = event.workflow_execution_terminated_event_attributes.reason
            elif t == E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
                detail = event.workflow_execution_failed_event_attributes.failure.message
            self.add(
                event,
                kind="run",
                name=name.replace("_", " "),
                outcome=name.upper(),
                duration_s=0,
                detail=detail,
            )


async def timeline(
    client: Client, run_id: str, execution: str | None = None
) -> list[TimelineEntry]:
    """Every step of the run, all its continue-as-new segments included."""
    return (await _build(client, run_id, execution)).entries


class RebuiltRun(BaseModel):
    """What the history of a run that ended without its report says about it."""

    ended: str  # how it ended: "terminated: <reason>", "timed out", "failed: <message>"
    steps: list[StepState]
    writes_left: list[str]  # completed (or in-flight) writes no compensation undid


async def rebuild_from_history(
    client: Client, run_id: str, execution: str | None = None
) -> RebuiltRun:
    """For a run that ended without its report (terminated, timed out, failed): its steps as
    its history shows them, and the completed writes that no compensation undid ("step 1
    post_entry"; a call still in flight may have written too; every such step when the history
    does not say which tools write)."""
    builder = await _build(client, run_id, execution)
    steps: dict[int, StepState] = {}
    undone: set[int] = set()
    for e in builder.entries:
        if e.step is None:
            continue
        if e.kind == "compensation" and e.outcome == "ok":
            undone.add(e.step)
        elif e.kind == "step":
            failed = e.outcome not in ("ok", "running")
            steps[e.step] = StepState(
                index=e.step,
                title=f"{e.name} (rebuilt from history)",
                tool=e.name,
                done=e.outcome == "ok",
                attempts=e.attempts or 1,
                error=f"{e.outcome}: {e.detail}".rstrip(": ") if failed else None,
            )
    writes = builder.write_tools
    ordered = sorted(steps.values(), key=lambda s: s.index)
    left = [
        f"step {s.index} {s.tool}"
        + ("" if s.done else " (in flight when the run ended: it may have written)")
        for s in ordered
        if (s.done or s.error is None)
        and s.index not in undone
        and (writes is None or s.tool in writes)
    ]
    end = next((e for e in reversed(builder.entries) if e.kind == "run"), None)
    ended = "closed" if end is None else f"{end.name}: {end.detail}".rstrip(": ")
    return RebuiltRun(ended=ended, steps=ordered, writes_left=left)


async def _build(client: Client, run_id: str, execution: str | None) -> _Builder:
    histories = await segment_histories(client, run_id, execution)
    first = histories[0].events[0]
    builder = _Builder(first.event_time.ToDatetime())
    builder.add(first, kind="run", name="started", outcome="ok", duration_s=0)
    for number, history in enumerate(histories):
        builder.activities.clear()  # event and timer ids start again in each segment
        builder.timers.clear()
        for event in history.events[0 if number else 1 :]:
            builder.feed(event)
    return builder


def format_timeline(run_id: str, entries: list[TimelineEntry]) -> str:
    lines = [f"run {run_id}: {len(entries)} entries from its event history"]
    lines.append(
        f"{'at s':>8}  {'kind':<12} {'step':>4}  {'name':<28} {'tries':>5} "
        f"{'took s':>7}  outcome   detail"
    )
    for e in entries:
        took = "-" if e.duration_s is None else f"{e.duration_s:.2f}"
        tries = str(e.attempts) if e.attempts else ""
        step = "" if e.step is None else str(e.step)
        lines.append(
            f"{e.offset_s:>8.2f}  {e.kind:<12} {step:>4}  {e.name[:28]:<28} {tries:>5} "
            f"{took:>7}  {e.outcome:<9} {e.detail[:100]}".rstrip()
        )
    return "\n".join(lines)
