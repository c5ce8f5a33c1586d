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

Effect = Literal["read", "write"]
ToolKind = Literal["tool", "check"]
RunStatus = Literal["DONE", "NOT_DONE", "WAITING_ON_YOU", "RUNNING"]

TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
DEFAULT_TASK_QUEUE = "keel"
MAX_STEPS = 1000
PROGRESS_KEPT = 200  # the report keeps the newest entries of the progress log


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
    parameters: dict[str, Any] = Field(default_factory=dict)


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


class AgentSpec(_Strict):
    """An agent: which model plans for it, which tools it may use, what must hold at the end."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    model: str = "scripted"
    tools: tuple[str, ...] = ()
    prompt: str = ""
    acceptance: tuple[AcceptanceSpec, ...] = ()


# The agent of a run whose plan is given up front: no model, any registered tool.
PLAN_RUNNER = AgentSpec(name="plan", description="Runs a plan given up front; no model involved.")


class AgentRunInput(_Strict):
    """The workflow's input: small, and free of secrets (those travel as references)."""

    agent: AgentSpec
    goal: str = Field(min_length=1)
    plan: PlanSpec | None = None


# --- activity boundaries -------------------------------------------------------------------


class ToolCall(_Strict):
    """What a tool activity receives. The idempotency key is stable across retries and crashes."""

    run_id: str
    step: int
    args: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str


class ResultRef(_Strict):
    """A tool result too large for history, kept in the blob store and named by its hash."""

    ref: str
    size: int
    preview: str


class ToolOutput(_Strict):
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
    """A plan to check against what the worker has registered, for this agent."""

    agent: AgentSpec
    plan: PlanSpec


class PreparedPlan(_Strict):
    """The worker's verdict on a plan: the specs of the tools it names, or why it is refused."""

    tools: dict[str, ToolSpec] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)


# --- durable plan state and the report -------------------------------------------------------


class StepState(_Strict):
    index: int
    title: str
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    done: bool = False
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
    progress: list[ProgressEntry] = Field(default_factory=list)
    progress_dropped: int = 0
    files_touched: list[str] = Field(default_factory=list)
    acceptance: list[AcceptanceState] = Field(default_factory=list)
    resume_notes: str = ""

    @property
    def next_step(self) -> StepState | None:
        return next((s for s in self.steps if not s.done), None)
