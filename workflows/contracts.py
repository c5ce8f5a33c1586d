"""The pydantic contracts that cross every boundary: plan files, tool calls, the run report.

Workflows own these models; activities, the worker and the starter import them. The module is
pure (no I/O, no clocks), so workflow code imports it through ``imports_passed_through``.

    plan = PlanSpec.model_validate_json(Path("plan.json").read_text())
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workflows.model_contracts import (
    AgentLoop,
    Budget,
    BudgetUsed,
    Message,
    ModelCallRecord,
    Routes,
    WireCompact,
)

Effect = Literal["read", "write"]
ToolKind = Literal["tool", "check"]
RunStatus = Literal["DONE", "NOT_DONE", "WAITING_ON_YOU", "RUNNING"]
Choice = Literal["approve", "reject", "edit", "retry", "skip", "abort", "extend", "answer"]
TimeoutAction = Literal["reject", "skip", "abort"]
STATUS_ATTRIBUTE = "KeelStatus"  # a Keyword search attribute: `starter.py pending` lists by it

TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
DEFAULT_TASK_QUEUE = "keel"
MAX_STEPS = 1000
MAX_GOAL_CHARS = 16_000
PROGRESS_KEPT = 200  # the report keeps the newest entries of the progress log
# What a continuation carries of what the run has already settled (the carry is recorded twice,
# as the old segment's last event and the new one's first, and every step stays in its
# segment's history for `starter.py show`): the newest CARRY_KEPT settled steps, progress
# entries and model calls, and the audit entries of the segment it ends (at least CARRY_KEPT),
# so each audit entry is in exactly one carry or the final report (`starter.py audit`).
CARRY_KEPT = 20
# Settled steps the report keeps in full; older ones are counted (a run of 10,000 model-chosen
# steps must fit a 2 MB payload when it continues as new or returns its report).
STEPS_KEPT = 100
# The audit trail's newest entries in the report. A run continues as new before AUDIT_KEPT // 2
# entries pile up in one segment, so every entry is in some segment's carry or in the final
# report: `starter.py audit` reads them all.
AUDIT_KEPT = 1000


def audit_kept() -> int:
    """AUDIT_KEPT, read when called (workflow modules are re-imported; this one is shared)."""
    return AUDIT_KEPT


class _Strict(BaseModel):
    """Refuses unknown keys, so a typo in a plan file is an error rather than a silent default."""

    model_config = ConfigDict(extra="forbid")


class RetrySpec(_Strict):
    """A bounded retry policy. Temporal reads max_attempts=0 as "forever": refused here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(3, ge=1, le=100)
    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = Field(2.0, ge=1.0, le=10.0)
    max_interval: timedelta = timedelta(seconds=30)
    non_retryable_error_types: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _intervals_make_sense(self) -> RetrySpec:
        if self.initial_interval <= timedelta(0):
            raise ValueError("initial_interval must be positive")
        if self.max_interval < self.initial_interval:
            raise ValueError("max_interval must be at least initial_interval")
        return self


class ArgRule(_Strict):
    """A condition on one argument, checked in the workflow: `amount > 100`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arg: str
    op: Literal[">", ">=", "<", "<=", "==", "!=", "in", "not in"]
    value: Any


class ApprovalPolicy(_Strict):
    """When a human must approve a call, how long they have, and what happens if they don't.

    `rules` empty means every call; otherwise a call needs approval when any rule holds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: tuple[ArgRule, ...] = ()
    timeout: timedelta = timedelta(days=1)
    on_timeout: TimeoutAction = "reject"
    remind_after: timedelta | None = None
    reminder: str | None = None  # a tool called with {"request": ...} when remind_after passes
    approvers: tuple[str, ...] = ()  # empty: anyone who can reach the run

    @model_validator(mode="after")
    def _positive(self) -> ApprovalPolicy:
        if self.timeout <= timedelta(0):
            raise ValueError("timeout must be positive")
        if self.remind_after is not None and not timedelta(0) < self.remind_after < self.timeout:
            raise ValueError("remind_after must fall between 0 and timeout")
        return self


class SecretRef(_Strict):
    """A secret by name. Plans and workflow inputs carry this, never the value: an activity
    resolves it (tool_context().secret(ref)) from the environment or KEEL_SECRETS_FILE."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class Grant(_Strict, WireCompact):
    """A scope an agent holds: a glob over scopes ("ledger:write:*", "fs:write:/data/out/*"),
    narrowed by rules on the call's arguments (all must hold): "can write" is not "anywhere".
    `*` and `?` stop at a `/`; `**` crosses any number of them (workflows.authz)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: str = Field(min_length=1)
    rules: tuple[ArgRule, ...] = ()


class ToolSpec(_Strict):
    """What the workflow needs to know to schedule a tool: its policy and its argument schema."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: ToolKind = "tool"
    description: str = ""
    effect: Effect = "read"
    compensation: str | None = None
    retry: RetrySpec = RetrySpec()
    timeout: timedelta = timedelta(seconds=30)
    heartbeat: timedelta | None = None
    # A cheap read run as a local activity: same bounded retries, no server round trip.
    local: bool = False
    approval: ApprovalPolicy | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    # What the tool needs, as templates filled from its arguments: "ledger:write:{account}".
    scopes: tuple[str, ...] = ()


class StepSpec(_Strict):
    """One step of a plan: call `tool` with `args`."""

    title: str = Field(min_length=1)
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("tool")
    @classmethod
    def _tool_name(cls, value: str) -> str:
        if not TOOL_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid tool name")
        return value


class AcceptanceSpec(_Strict):
    """A criterion in words and the check activity that verifies it."""

    criterion: str = Field(min_length=1)
    check: str
    args: dict[str, Any] = Field(default_factory=dict)


class PlanSpec(_Strict):
    """A plan as a model proposes it or as a user writes it in a plan file."""

    goal: str = Field(min_length=1)
    # The plan and its state travel in one history (2 MB a payload): a bound until long plans
    # continue-as-new with compact state.
    steps: list[StepSpec] = Field(min_length=1, max_length=MAX_STEPS)
    acceptance: list[AcceptanceSpec] = Field(default_factory=list)
    # Done means verified: a run nothing verifies ends NOT_DONE unless its plan (given up
    # front; a model's plan cannot opt out) or its agent says unverified is acceptable.
    unverified_ok: bool = False


class AgentSpec(_Strict):
    """An agent: which model plans for it, which tools it may use, what must hold at the end."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    model: str = "scripted"
    tools: tuple[str, ...] = ()
    prompt: str = ""
    acceptance: tuple[AcceptanceSpec, ...] = ()
    # True: a run with no acceptance check and no verify route may end DONE, unverified.
    unverified_ok: bool = False
    # Gates of the agent's own, by tool name, on top of the tools' declared ones.
    approvals: dict[str, ApprovalPolicy] = Field(default_factory=dict)
    # What a failed step does once its retries are spent: fail the run, or ask a human.
    on_failure: Literal["fail", "ask"] = "fail"
    escalation: ApprovalPolicy = ApprovalPolicy(on_timeout="abort")
    # Models by step kind, each with its fallback chain. With an `act` route and no plan given,
    # the agent acts step by step: a model call chooses each tool call (see AgentLoop).
    routes: Routes = Routes()
    loop: AgentLoop = AgentLoop()
    budget: Budget = Budget()
    # A spent budget ends the run (compensating writes), or asks a human who may extend it.
    on_budget: Literal["fail", "ask"] = "fail"
    # Continue as new (same run id, compact state) once the history reaches this many events,
    # or earlier when the server suggests it; Temporal caps a history at 50,000.
    max_history_events: int = Field(10_000, ge=20, le=45_000)
    # The same by size (Temporal's hard limit is 50 MB); the server's own suggestion to
    # continue as new is followed too.
    max_history_bytes: int = Field(10_000_000, ge=100_000, le=45_000_000)
    # Scopes the agent holds. A tool that declares scopes runs only under a matching grant;
    # checked in the workflow before scheduling and again in the activity.
    grants: tuple[Grant, ...] = ()


# The agent of a run whose plan is given up front: no model, any registered tool.
PLAN_RUNNER = AgentSpec(
    name="plan",
    description="Runs a plan given up front; no model involved.",
    grants=(Grant(scope="**"),),  # the operator wrote the plan: every scope
)


class AgentRunInput(_Strict):
    """The workflow's input: small, and free of secrets (those travel as references).

    The worker is the authority on agents: it resolves `agent` by name from its own catalog
    (keel.resolve_agent) and takes nothing else from it but budget limits lower than its own.
    """

    agent: AgentSpec
    # The goal travels in every segment's input and report: long material goes by reference.
    goal: str = Field(min_length=1, max_length=MAX_GOAL_CHARS)
    plan: PlanSpec | None = None
    # Upsert the KeelStatus search attribute (the namespace must have it registered).
    status_attribute: bool = False
    # Idempotency keys are the run id and the step (stable when a closed run's id is started
    # again with --rerun, so a write that completed is not repeated); a scope gives a rerun
    # keys of its own (--rerun --new-keys).
    key_scope: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,32}$")
    # Set by the run itself when it continues as new: the state it carries on with.
    carry: RunCarry | None = None


class RunCarry(_Strict):
    """What a run hands to its continuation: the plan state, not the history behind it."""

    report: RunReport
    tools: dict[str, ToolSpec] = Field(default_factory=dict)
    turns: list[Message] = Field(default_factory=list)  # the model has not seen these yet
    threads: dict[str, str | None] = Field(default_factory=dict)  # model context references
    repeats: dict[str, int] = Field(default_factory=dict)
    asked: int = 0
    turn: int = 0


# --- activity boundaries -------------------------------------------------------------------


class ArgsCheck(_Strict):
    """Arguments to validate against a tool's schema (an edit from a human)."""

    tool: str
    args: dict[str, Any] = Field(default_factory=dict)


class ToolCall(_Strict, WireCompact):
    """What a tool activity receives. The idempotency key is stable across retries and crashes."""

    run_id: str
    step: int
    args: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str
    # The agent's grants, checked again by the activity (None: a compensation, a check or a
    # reminder, which undo or read what an authorized call did).
    grants: list[Grant] | None = None


class ResultRef(_Strict):
    """A tool result too large for history, kept in the blob store and named by its hash."""

    ref: str
    size: int
    preview: str


class ToolOutput(_Strict, WireCompact):
    """What a tool activity returns: a small value inline, or a reference to a stored one."""

    value: Any = None
    ref: ResultRef | None = None
    files_touched: list[str] = Field(default_factory=list)
    attempt: int = 1


class CheckResult(_Strict):
    """What an acceptance check decides."""

    passed: bool
    detail: str = ""


class PlanRequest(_Strict):
    """What a model activity receives to propose a plan."""

    agent: AgentSpec
    goal: str
    tools: list[ToolSpec] = Field(default_factory=list)


class PrepareRequest(_Strict):
    """A plan to check against what the worker has registered, for this agent; with no plan,
    the agent's own tools and checks (an agent that acts step by step)."""

    agent: AgentSpec
    plan: PlanSpec | None = None


class AgentRequest(_Strict):
    """The agent a run asks to be (only its name and lower budget limits count) and the tools
    it already uses (a continuation's), to be resolved from the worker's catalog."""

    agent: AgentSpec
    tools: list[str] = Field(default_factory=list)


class ResolvedAgent(_Strict):
    """The worker's own definition of the agent, and of the tools asked for; or why not."""

    agent: AgentSpec | None = None
    tools: dict[str, ToolSpec] = Field(default_factory=dict)
    problem: str | None = None


class PreparedPlan(_Strict):
    """The worker's verdict on a plan: the specs of the tools it names, or why it is refused."""

    tools: dict[str, ToolSpec] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)


# --- durable plan state and the report -------------------------------------------------------


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


class AcceptanceState(_Strict):
    criterion: str
    check: str
    args: dict[str, Any] = Field(default_factory=dict)
    passed: bool | None = None
    detail: str = ""


class ProgressEntry(_Strict):
    at: datetime
    message: str


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
    continued: int = 0  # times the run continued as new
    audit: list[AuditEntry] = Field(default_factory=list)  # the newest AUDIT_KEPT
    audit_dropped: int = 0
    resume_notes: str = ""

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
        report = self.compacted(min(CARRY_KEPT, STEPS_KEPT))
        progress_cut = max(0, len(report.progress) - CARRY_KEPT)
        new_audit = report.audit_dropped + len(report.audit) - segment_audit_start
        audit_cut = max(0, len(report.audit) - max(new_audit, CARRY_KEPT))
        return report.model_copy(
            update={
                "progress": report.progress[progress_cut:],
                "progress_dropped": report.progress_dropped + progress_cut,
                "model_calls": report.model_calls[-CARRY_KEPT:],
                "audit": report.audit[audit_cut:],
                "audit_dropped": report.audit_dropped + audit_cut,
            }
        )

    def compacted(self, keep: int | None = None) -> RunReport:
        """This report with only the newest `keep` (STEPS_KEPT) settled steps in full: a step
        still to run is never dropped, so a run resumes from the compacted report alone."""
        excess = len(self.steps) - (STEPS_KEPT if keep is None else keep)
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


AgentRunInput.model_rebuild()
