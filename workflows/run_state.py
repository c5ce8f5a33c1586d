"""RunState: what a run knows about itself (its input, its report, the tools it may call) and
the changes every part of the workflow makes the same way: the progress log, the status (memo
and search attribute), the final report, a skipped step, idempotency keys.

Workflow code: times are workflow time, logs are silent on replay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast, get_args

from temporalio import workflow
from temporalio.common import SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from keel.shared.bounds import PAYLOAD_LIMIT, fit, json_size
    from keel.workflows.contracts import (
        PROGRESS_KEPT,
        STATUS_ATTRIBUTE,
        AgentRunInput,
        AgentSpec,
        PrefetchedCall,
        ProgressEntry,
        RunReport,
        RunStatus,
        SkillInfo,
        StepState,
        SupervisorSpec,
        ToolSpec,
    )
    from keel.workflows.contracts.report import EventKind
    from keel.workflows.events import EventLog
    from keel.workflows.metrics import count

STATUS_KEY = SearchAttributeKey.for_keyword(STATUS_ATTRIBUTE)


class RunState:
    def __init__(self, run: AgentRunInput) -> None:
        self.run = run
        self.report = RunReport(
            run_id=workflow.info().workflow_id,
            agent=run.agent.name,
            goal=run.goal,
            budget=run.agent.budget,
            draft=run.draft,
            job=run.job.name if run.job else None,
        )
        self.tools: dict[str, ToolSpec] = {}
        self.events = EventLog(workflow.now)
        if run.carry is not None:  # a continuation: the state carries on, the history does not
            self.report = run.carry.report
            self.tools = run.carry.tools
            self.events = EventLog(workflow.now, run.carry.events, run.carry.next_event)
        # Set from the keel-agent-from-worker patch: runs older than it keep their old ways.
        self.agent_from_worker = False
        self.segment_steps = 0  # steps run since this run (or continuation) began
        self.segment_audit_start = self.report.audit_dropped + len(self.report.audit)
        # Whether the worker admitted the run (agent resolved, a given plan checked); None
        # until it decides. A client starting the run waits on it (AgentWorkflow.admission).
        self.admitted: bool | None = None
        self.supervisor: SupervisorSpec | None = None  # the run supervises (Supervision)
        # Told (before, after) of every status change (JobHooks notifies a human it waits on).
        self.on_status: list[Callable[[RunStatus, RunStatus], None]] = []
        # Work started in the background (notifications): settled before the run closes or
        # continues as new.
        self.side_tasks: list[asyncio.Task[None]] = []
        # A job's previous run, when the job asks for it: for the model's opening context.
        self.previous_run: str | None = None
        # What an agent with memory remembers, for the model's opening context (MemoryHooks).
        self.memory_context: str | None = None
        self.skill_catalog: tuple[SkillInfo, ...] = ()  # skills the agent may load (resolved)
        # The quick reads the last model call ran itself, by the step they were run for
        # (contracts.PrefetchPlan): call_tool takes each for the call it was made for.
        self.prefetched: dict[int, PrefetchedCall] = {}

    @property
    def agent(self) -> AgentSpec:
        return self.run.agent

    def log(self, message: str, **fields: str | int | None) -> None:
        """One progress entry, one live event (of kind `event`, else "progress") and one log
        line carrying `fields` (step, tool, event, outcome)."""
        step, tool, event, outcome = (fields.get(k) for k in ("step", "tool", "event", "outcome"))
        self.events.add(
            cast(EventKind, event) if event in get_args(EventKind) else "progress",
            message,
            step=step if isinstance(step, int) else None,
            tool=str(tool) if tool is not None else None,
            outcome=str(outcome) if outcome is not None else None,
        )
        progress = self.report.progress
        progress.append(ProgressEntry(at=workflow.now(), message=message))
        if len(progress) > PROGRESS_KEPT:
            # Bounded so the report (query result and final result) stays far below 2 MB.
            del progress[0]
            self.report.progress_dropped += 1
        # workflow.logger stays silent during replay: a decision is logged once.
        workflow.logger.info(message, extra={k: v for k, v in fields.items() if v is not None})

    def set_status(self, status: RunStatus) -> None:
        before, self.report.status = self.report.status, status
        pending = self.report.pending
        said = pending.model_dump(mode="json") if pending else None
        # Under protocol 1 a status is written only where it changed (AgentRunInput.protocol);
        # runs from before replay the writes they made.
        changes_only = self.run.protocol >= 1
        # The memo says what the run waits for, readable with no worker running (describe).
        if not changes_only or workflow.memo_value("pending", None) != said:
            workflow.upsert_memo({"pending": said})
        # The web UI shows a run's current details on its page (no history event, no replay).
        workflow.set_current_details(
            "WAITING ON YOU: " + pending.reason
            if status == "WAITING_ON_YOU" and pending
            else status
        )
        if self.run.status_attribute and (
            not changes_only or workflow.info().typed_search_attributes.get(STATUS_KEY) != status
        ):
            workflow.upsert_search_attributes([STATUS_KEY.value_set(status)])
        for listener in self.on_status:
            listener(before, status)

    async def settled(self) -> None:
        """Wait for the work started in the background."""
        while self.side_tasks:
            await self.side_tasks.pop(0)

    def admit(self) -> None:
        if self.admitted is None:
            self.admitted = True

    def refuse(self, reason: str) -> RunReport:
        """The worker will not run this agent or plan: the run ends NOT_DONE, nothing ran."""
        self.report.refused = True
        return self.finish("NOT_DONE", reason)

    def finish(self, status: RunStatus, reason: str) -> RunReport:
        if self.admitted is None and status != "WAITING_ON_YOU":
            self.admitted = False  # ended before it was admitted: the client hears why
        self.set_status(status)
        self.report.reason = reason
        self.log(f"{status}: {reason}", event="final", outcome=status)
        out = self.payload(final=status != "WAITING_ON_YOU")
        if out.status != status:  # the report could not fit: the run ends NOT_DONE
            self.set_status(out.status)
            self.report.reason = out.reason
        if status != "WAITING_ON_YOU":
            count("runs_finished", self.agent.name, status=out.status)
        return out

    def payload(self, final: bool = False) -> RunReport:
        """The report as it may leave the workflow: within PAYLOAD_LIMIT (keel.shared.bounds).
        One that cannot fit is cut to its summary, and a run ending with it is NOT_DONE."""
        self.report.resume_notes = self.resume_notes()
        report = self.report.with_newest_steps()
        fitted = fit(report, keep_saga=False)
        if fitted is not None:
            return fitted
        status = "NOT_DONE" if final else report.status
        why = f"its report ({json_size(report)} bytes) is over the {PAYLOAD_LIMIT}-byte limit"
        return RunReport(
            run_id=report.run_id,
            agent=report.agent,
            goal=report.goal,
            status=status,
            reason=f"{report.reason}; {why}: only this summary is kept (see starter.py show)",
            budget=report.budget,
            used=report.used,
            steps_dropped=report.step_total,
            steps_dropped_done=report.steps_done,
            continued=report.continued,
        )

    def resume_notes(self) -> str:
        report = self.report
        done = f"{report.steps_done}/{report.step_total} steps done"
        nxt = report.next_step
        if report.status == "DONE":
            return f"finished: {done}; nothing to resume"
        if report.pending is not None:
            return f"{done}; waiting on {report.pending.request_id}"
        if nxt is None:
            return f"{done}; acceptance checks next"
        where = f"step {nxt.index} '{nxt.title}' ({nxt.tool})"
        if report.status == "NOT_DONE":
            return f"{done}; stopped at {where}"
        return f"{done}; resumes at {where}"

    def skip(self, step: StepState, why: str) -> None:
        step.skipped = True
        step.finished_at = workflow.now()
        self.log(f"step {step.index} {why}")

    def key(self, suffix: str) -> str:
        """An idempotency key: the same on every retry, after a crash and (unless the rerun
        asks for keys of its own) when a closed run's id is started again."""
        info = workflow.info()
        if not self.agent_from_worker:
            # Runs started before reruns existed keep their keys (run id per execution).
            return f"{info.workflow_id}:{info.first_execution_run_id}:{suffix}"
        scope = f"{self.run.key_scope}:" if self.run.key_scope else ""
        return f"{info.workflow_id}:{scope}{suffix}"

    @staticmethod
    def stop_if_cancelled() -> None:
        # A tool call waits for its activity to stop when the run is cancelled; one that
        # finished anyway returns normally (its write is on the saga stack), so the run has to
        # notice the cancel request itself rather than start the next step.
        if workflow.cancellation_reason() is not None:
            raise asyncio.CancelledError
