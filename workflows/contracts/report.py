"""Durable plan state and the run report: steps with checkboxes, acceptance, progress, decisions,
audit, compensations; what the `report` query and the run's result return."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from keel.workflows.contracts import base as limits  # read at call time: tests lower them
from keel.workflows.contracts.base import (
    Choice,
    OmitDefaults,
    RunStatus,
    TimeoutAction,
    _Strict,
)
from keel.workflows.contracts.jobs import NotificationState
from keel.workflows.contracts.models import Budget, BudgetUsed, ModelCallRecord
from keel.workflows.contracts.outputs import ResultRef
from keel.workflows.contracts.skills import SkillState
from keel.workflows.contracts.supervision import ChildState


class PendingRequest(_Strict):
    """What a waiting run waits for: a human's decision on one call."""

    request_id: str
    kind: Literal["approval", "escalation", "question"]
    step: int
    tool: str
    args_summary: dict[str, Any] = Field(default_factory=dict)
    args_hash: str
    reason: str
    asked_at: datetime
    deadline: datetime
    choices: list[Choice]
    on_timeout: TimeoutAction
    approvers: list[str] = Field(default_factory=list)
    chain: list[str] = Field(default_factory=list)  # a delegated run's delegators, oldest first


class Decision(_Strict):
    """A human's answer, by update (acknowledged) or by signal (fire and forget)."""

    request_id: str
    choice: Choice
    reason: str = ""
    args: dict[str, Any] | None = None  # with "edit": the arguments to use instead
    args_hash: str | None = None  # with "approve": binds the approval to the exact call
    approver: str = ""


class DecisionRecord(_Strict):
    request_id: str
    choice: Choice | Literal["timeout"]
    reason: str = ""
    approver: str = ""
    at: datetime


class AuditEntry(_Strict):
    """Who did what, when, and what came of it: tool calls, denials, decisions, compensations."""

    at: datetime
    actor: str  # "agent:NAME", "model:PROVIDER:MODEL", a human approver, or "keel"
    action: Literal["tool_call", "denied", "decision", "decision_refused", "compensation"]
    target: str  # the tool, the request id
    step: int | None = None
    outcome: str = ""
    detail: str = ""


class SagaEntry(_Strict):
    """A completed write and what undoes it."""

    step: int
    tool: str
    compensation: str
    args: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    # A write of a delegated run, undone by the delegating one: the key its own run would use.
    undo_key: str | None = None


class CompensationState(_Strict):
    step: int
    tool: str
    compensation: str
    status: Literal["done", "failed", "skipped"]
    attempts: int = 0
    error: str | None = None


class StepState(_Strict):
    index: int
    title: str
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    done: bool = False
    skipped: bool = False
    attempts: int = 0
    result: Any = None
    result_ref: ResultRef | None = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    child: str | None = None  # a delegation: the run id of the agent it handed the goal to
    # A draft run's write: not made, recorded with its arguments as "would write".
    drafted: bool = False


class AcceptanceState(_Strict):
    criterion: str
    check: str
    args: dict[str, Any] = Field(default_factory=dict)
    passed: bool | None = None
    detail: str = ""


class ProgressEntry(_Strict):
    at: datetime
    message: str


EventKind = Literal[
    "progress",  # a line of the progress log with no kind of its own
    "status",  # RUNNING, WAITING_ON_YOU
    "step_started",
    "step_done",
    "step_failed",
    "policy_check",  # a call outside the agent's grants
    "tool_attempt",  # a tool's attempt failed and Temporal retries it
    "approval_requested",  # the run waits on a human (approval, escalation, question)
    "decision",  # a human's answer was accepted
    "compensation",
    "budget_warning",  # a limit is 80 % spent
    "model_call",  # with usage
    "model_text",  # the model's text as it streams (partial; model_call has it whole)
    "acceptance",
    "continue_as_new",
    "child_started",  # a supervisor's child run
    "child_ended",
    "final",  # DONE or NOT_DONE: the last event of a run
    "gap",  # (made by the client) events older than the run keeps: `data` says which
]


class _EventBody(_Strict, OmitDefaults):
    """What an event says, whoever writes it (the run, or an activity of it)."""

    message: str = ""
    step: int | None = None
    tool: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class RunEvent(_EventBody):
    """One event of a run's live stream. Offsets are global and gapless over the run's life
    (continue-as-new included) and the same on every replay, so a client that resumes from
    an offset after a disconnect or a worker crash sees nothing twice and misses nothing."""

    offset: int
    at: datetime
    kind: EventKind
    outcome: str | None = None


class ActivityEvent(_EventBody):
    """An event an activity publishes to its run (a retried attempt, the model's streamed
    text), by the `activity_events` signal: `source` and `seq` let the run drop a batch it has."""

    kind: Literal["tool_attempt", "model_text"]


class ActivityEvents(_Strict):
    source: str  # the activity and its attempt
    seq: int  # batches of one source are numbered from 1
    events: list[ActivityEvent]


class EventPage(_Strict):
    """The answer to the `events` query: events from an offset on, and where to go on."""

    events: list[RunEvent] = Field(default_factory=list)
    next_offset: int = 0  # ask from here next time
    first_kept: int = 0  # older events are no longer kept (see EVENTS_KEPT_BYTES)
    status: RunStatus = "RUNNING"


class RunReport(_Strict):
    """The run's machine-readable state: returned by the query, the result and `status --json`."""

    run_id: str
    agent: str
    goal: str
    status: RunStatus = "RUNNING"
    reason: str = ""
    verified: bool = False
    steps: list[StepState] = Field(default_factory=list)
    steps_dropped: int = 0  # settled steps older than the newest STEPS_KEPT, counted only
    steps_dropped_done: int = 0  # of those, the ones done (the rest were skipped)
    progress: list[ProgressEntry] = Field(default_factory=list)
    progress_dropped: int = 0
    files_touched: list[str] = Field(default_factory=list)
    acceptance: list[AcceptanceState] = Field(default_factory=list)
    pending: PendingRequest | None = None
    decisions: list[DecisionRecord] = Field(default_factory=list)
    saga: list[SagaEntry] = Field(default_factory=list)
    compensations: list[CompensationState] = Field(default_factory=list)
    budget: Budget = Budget()
    used: BudgetUsed = Field(default_factory=BudgetUsed)
    model_calls: list[ModelCallRecord] = Field(default_factory=list)  # the newest PROGRESS_KEPT
    summary: str = ""  # what the model said when it finished
    output: Any = None  # the typed result it finished with (AgentSpec.output_type), as data
    continued: int = 0  # times the run continued as new
    audit: list[AuditEntry] = Field(default_factory=list)  # the newest AUDIT_KEPT
    audit_dropped: int = 0
    resume_notes: str = ""
    children: list[ChildState] = Field(default_factory=list)  # a supervisor's
    # The worker refused the run (its agent or given plan) before anything ran: its id may be
    # started again without --rerun, since no write of it could repeat.
    refused: bool = False
    # A run in draft mode: reads ran, writes were recorded as "would write" and not made.
    draft: bool = False
    would_write: int = 0  # a draft run's writes recorded and not made
    job: str | None = None  # the job whose schedule started the run
    # A job's run skipped because a job it is blocked by did not end DONE: why.
    blocked: str = ""
    notifications: list[NotificationState] = Field(default_factory=list)  # the newest kept
    skills: list[SkillState] = Field(default_factory=list)  # loaded by the run, in order

    @property
    def next_step(self) -> StepState | None:
        return next((s for s in self.steps if not s.done and not s.skipped), None)

    @property
    def step_total(self) -> int:
        """Steps so far, the dropped ones included: the next step's index is this plus one."""
        return self.steps_dropped + len(self.steps)

    @property
    def steps_done(self) -> int:
        return self.steps_dropped_done + sum(s.done for s in self.steps)

    def carried(self, segment_audit_start: int) -> RunReport:
        """The report a continuation carries (see CARRY_KEPT); `segment_audit_start` is the
        audit count (kept and dropped) when the segment began."""
        report = self.with_newest_steps(min(limits.CARRY_KEPT, limits.STEPS_KEPT))
        progress_cut = max(0, len(report.progress) - limits.CARRY_KEPT)
        new_audit = report.audit_dropped + len(report.audit) - segment_audit_start
        audit_cut = max(0, len(report.audit) - max(new_audit, limits.CARRY_KEPT))
        return report.model_copy(
            update={
                "progress": report.progress[progress_cut:],
                "progress_dropped": report.progress_dropped + progress_cut,
                "model_calls": report.model_calls[-limits.CARRY_KEPT :],
                "audit": report.audit[audit_cut:],
                "audit_dropped": report.audit_dropped + audit_cut,
            }
        )

    def with_newest_steps(self, keep: int | None = None) -> RunReport:
        """This report with only the newest `keep` (STEPS_KEPT) settled steps in full: a step
        still to run is never dropped, so a run resumes from the with_newest_steps report alone."""
        excess = len(self.steps) - (limits.STEPS_KEPT if keep is None else keep)
        dropped = 0
        while dropped < excess and (self.steps[dropped].done or self.steps[dropped].skipped):
            dropped += 1
        if dropped == 0:
            return self
        gone = self.steps[:dropped]
        return self.model_copy(
            update={
                "steps": self.steps[dropped:],
                "steps_dropped": self.steps_dropped + dropped,
                "steps_dropped_done": self.steps_dropped_done + sum(s.done for s in gone),
            }
        )
