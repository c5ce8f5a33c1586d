"""A job's activities: the gate a scheduled run passes first (the jobs it is blocked by, its
job's previous run), its notifications (outbox files, webhooks) and its output files.

The gate reads the server with the worker's own client: each job's schedule lists its recent
runs (keel-job.NAME), strongly consistent, so a run that just ended is seen ended.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from temporalio import activity
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from keel.activities.outcomes import reported
from keel.activities.secrets import fill_secrets, redact, resolved_values
from keel.workflows.contracts import (
    PREVIOUS_CHARS,
    JobGateAnswer,
    JobGateRequest,
    JobOutput,
    Notification,
    OutboxChannel,
    RunReport,
    WebhookChannel,
    schedule_id,
)

WEBHOOK_TIMEOUT = 10.0  # seconds; the activity's retry policy bounds the attempts


async def recent_runs(client: Client, job: str) -> list[str] | None:
    """The workflow ids of the job's recent runs, newest first; None if it has no schedule."""
    try:
        described = await client.get_schedule_handle(schedule_id(job)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    started = [
        (result.scheduled_at, result.action.workflow_id)
        for result in described.info.recent_actions
        if isinstance(result.action, ScheduleActionExecutionStartWorkflow)
    ]
    return [run_id for _, run_id in sorted(started, reverse=True)]


async def closed_report(
    client: Client, run_id: str
) -> tuple[WorkflowExecutionStatus | None, RunReport | None]:
    """A job run's execution status (None: gone, past the namespace's retention) and, once it
    has closed, its report (a run that failed without one: NOT_DONE with the cause)."""
    handle = client.get_workflow_handle(run_id, result_type=RunReport)
    try:
        status = (await handle.describe()).status
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None, None
        raise
    if status == WorkflowExecutionStatus.RUNNING:
        return status, None
    try:
        return status, await handle.result(follow_runs=False)
    except WorkflowFailureError as err:
        failed = reported(err)
        if failed is None:
            failed = RunReport(
                run_id=run_id, agent="?", goal="?", status="NOT_DONE", reason=str(err.cause)
            )
        return status, failed


def said(status: WorkflowExecutionStatus | None, report: RunReport | None) -> str:
    """A job run in one line: "STATUS: summary or reason"."""
    if report is not None:
        return f"{report.status}: {report.summary or report.reason}"
    return "RUNNING" if status is not None else "gone (past the namespace's retention)"


async def blocker(client: Client, job: str) -> str | None:
    """Why `job` blocks the jobs that wait on it, or None when its last run ended DONE."""
    runs = await recent_runs(client, job)
    if runs is None:
        return f"{job} is not a job on this server"
    if not runs:
        return f"{job} has not run yet"
    status, report = await closed_report(client, runs[0])
    if status == WorkflowExecutionStatus.COMPLETED:
        return None
    return f"{job}'s last run {runs[0]} is {said(status, report)}"[:500]


@activity.defn(name="keel.job_gate")
async def job_gate(request: JobGateRequest) -> JobGateAnswer:
    client = activity.client()
    blocked = [why for name in request.job.blocked_by if (why := await blocker(client, name))]
    if blocked:
        return JobGateAnswer(blocked="blocked by " + "; ".join(blocked))
    if not request.job.previous_run:
        return JobGateAnswer()
    runs = [r for r in await recent_runs(client, request.job.name) or [] if r != request.run_id]
    if not runs:
        return JobGateAnswer(previous=None)
    line = said(*await closed_report(client, runs[0]))
    return JobGateAnswer(previous=f"{runs[0]} ({line})"[:PREVIOUS_CHARS])


def write_atomically(path: Path, text: str) -> None:
    """A reader (or prune) never sees half a file; a retried write replaces it whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def markdown(note: Notification) -> str:
    lines = [
        f"# {'[DRAFT] ' if note.draft else ''}job {note.job}: {note.status}",
        "",
        note.text,
        "",
        f"- run: `{note.run_id}`",
        f"- event: {note.event}",
        f"- at: {note.at.isoformat()}",
    ]
    if note.summary:
        lines += ["", "## Summary", "", note.summary]
    if note.reason:
        lines += ["", "## Reason", "", note.reason]
    return "\n".join(lines) + "\n"


def to_outbox(channel: OutboxChannel, note: Notification) -> str:
    # Named by run, event and time: a retried notification replaces its own files.
    stem = f"{note.run_id}.{note.event}.{note.at.strftime('%Y%m%dT%H%M%S%f')}"
    folder = Path(channel.dir)
    write_atomically(folder / f"{stem}.json", note.model_dump_json(exclude={"channel"}, indent=2))
    write_atomically(folder / f"{stem}.md", markdown(note))
    return str(folder / f"{stem}.md")


def to_webhook(channel: WebhookChannel, note: Notification) -> str:
    url = fill_secrets(channel.url)
    headers = {"Content-Type": "application/json"}
    headers |= {name: fill_secrets(value) for name, value in channel.headers.items()}
    body = note.model_dump(mode="json", exclude={"channel"})
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as answer:
            return f"HTTP {answer.status}"
    except urllib.error.HTTPError as err:
        # A refusal (bad URL, bad token) will not change on retry; a busy or broken server may.
        final = 400 <= err.code < 500 and err.code not in (408, 429)
        raise ApplicationError(
            f"the webhook answered HTTP {err.code}", type="WebhookRefused", non_retryable=final
        ) from None
    except (urllib.error.URLError, OSError) as err:
        why = redact(str(getattr(err, "reason", err)), resolved_values())
        raise ApplicationError(f"the webhook is unreachable: {why}", type="WebhookDown") from None


@activity.defn(name="keel.notify")
async def notify(note: Notification) -> str:
    channel = note.channel
    if isinstance(channel, OutboxChannel):
        return await asyncio.to_thread(to_outbox, channel, note)
    return await asyncio.to_thread(to_webhook, channel, note)


@activity.defn(name="keel.job_output")
async def job_output(output: JobOutput) -> str:
    path = Path(output.output_dir) / f"{output.run_id}.json"
    await asyncio.to_thread(write_atomically, path, json.dumps(output.report, indent=2))
    return str(path)


JOB_ACTIVITIES = (job_gate, notify, job_output)
