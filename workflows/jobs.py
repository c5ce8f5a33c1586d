"""JobHooks: what a run started by a job's schedule does beyond any other run. Before anything
runs it checks the jobs it is blocked by (skipped, NOT_DONE, when one's last run is not DONE)
and may read its job's previous report; when it waits on a human or ends, it notifies the job's
channels (each an activity with bounded retries: a failing channel is reported, never fails
the run); at the end its report goes to the job's output directory.

    hooks = JobHooks(state)
    skipped = await hooks.gate()          # a final report, or None to go on
    report = await hooks.finish(report)   # the same report, with the notifications it sent
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from keel.workflows.contracts import (
        NOTIFICATIONS_KEPT,
        Channel,
        JobContext,
        JobGateAnswer,
        JobGateRequest,
        JobOutput,
        Notification,
        NotificationState,
        NotifyOn,
        RunReport,
        RunStatus,
    )
    from keel.workflows.failures import describe_failure
    from keel.workflows.planning import KEEL_ACTIVITY_TIMEOUT, KEEL_RETRY
    from keel.workflows.run_state import RunState

# A channel that is down gets a few tries, then the report says so: people still see the run.
NOTIFY_RETRY = RetryPolicy(
    maximum_attempts=3, initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=5)
)
NOTIFY_TIMEOUT = timedelta(seconds=30)


class JobHooks:
    def __init__(self, state: RunState) -> None:
        self.state = state
        state.on_status.append(self._status_changed)

    @property
    def job(self) -> JobContext | None:
        return self.state.run.job

    async def gate(self) -> RunReport | None:
        """The final report of a run skipped because a job it is blocked by did not end DONE;
        None to go on (and the previous run's summary, if the job asks for it, is kept for the
        model's opening context)."""
        job, state = self.job, self.state
        if job is None or not (job.blocked_by or job.previous_run):
            return None
        answer = await workflow.execute_activity(
            "keel.job_gate",
            JobGateRequest(job=job, run_id=workflow.info().workflow_id),
            result_type=JobGateAnswer,
            start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
            retry_policy=KEEL_RETRY,
        )
        if answer.blocked is not None:
            state.report.blocked = answer.blocked
            return state.finish("NOT_DONE", f"skipped: {answer.blocked}")
        state.previous_run = answer.previous
        return None

    async def finish(self, report: RunReport) -> RunReport:
        """Tell the job's channels how the run ended and write its report to the output
        directory; the report with what was sent (and what failed)."""
        job = self.job
        if job is None:
            return report
        if "ended" in job.notify_on:
            self._send("ended", report)
        if job.output_dir is not None:
            self.state.side_tasks.append(asyncio.create_task(self._write_output(job, report)))
        await self.state.settled()
        return report.model_copy(update={"notifications": list(self.state.report.notifications)})

    def _status_changed(self, before: RunStatus, after: RunStatus) -> None:
        job = self.job
        waiting = after == "WAITING_ON_YOU" and before != after
        if job is not None and waiting and "waiting" in job.notify_on:
            self._send("waiting", self.state.report)

    def _send(self, event: NotifyOn, report: RunReport) -> None:
        """One activity per channel, in the background: a run waiting on a human starts
        waiting at once, and a slow channel holds up no other."""
        job = self.job
        assert job is not None
        for channel in job.channels:
            note = Notification(
                channel=channel,
                job=job.name,
                run_id=report.run_id,
                event=event,
                status=report.status,
                text=headline(job.name, event, report),
                reason=report.reason[:2000],
                summary=report.summary[:2000],
                draft=report.draft,
                at=workflow.now(),
            )
            self.state.side_tasks.append(asyncio.create_task(self._notify(channel, note)))

    async def _notify(self, channel: Channel, note: Notification) -> None:
        try:
            await workflow.execute_activity(
                "keel.notify",
                note,
                start_to_close_timeout=NOTIFY_TIMEOUT,
                retry_policy=NOTIFY_RETRY,
            )
            self._record(NotificationState(channel=channel.label, event=note.event, ok=True))
        except ActivityError as err:
            error = describe_failure(err)[:500]
            self._record(
                NotificationState(channel=channel.label, event=note.event, ok=False, error=error)
            )
            self.state.log(f"notification to {channel.label} failed: {error}")

    async def _write_output(self, job: JobContext, report: RunReport) -> None:
        assert job.output_dir is not None
        label = f"output:{job.output_dir}"
        try:
            await workflow.execute_activity(
                "keel.job_output",
                JobOutput(
                    output_dir=job.output_dir,
                    run_id=report.run_id,
                    report=report.model_dump(mode="json"),
                ),
                start_to_close_timeout=NOTIFY_TIMEOUT,
                retry_policy=NOTIFY_RETRY,
            )
            self._record(NotificationState(channel=label, event="ended", ok=True))
        except ActivityError as err:
            error = describe_failure(err)[:500]
            self._record(NotificationState(channel=label, event="ended", ok=False, error=error))

    def _record(self, sent: NotificationState) -> None:
        notes = self.state.report.notifications
        notes.append(sent)
        del notes[:-NOTIFICATIONS_KEPT]


def headline(job: str, event: NotifyOn, report: RunReport) -> str:
    """The one paragraph a person reads first: which job, what state, what next."""
    draft = "[DRAFT] " if report.draft else ""
    if event == "waiting" and report.pending is not None:
        return (
            f"{draft}job {job}: WAITING ON YOU: {report.pending.reason} (run {report.run_id}; "
            f"answer with: starter.py approve|reject|decide {report.run_id})"
        )
    what = report.summary or report.reason
    return f"{draft}job {job}: {report.status}: {what} (run {report.run_id})"[:2000]
