"""Policies a tool or an agent declares: bounded retries, approval gates, grants, secrets by
reference, and the tool spec the workflow schedules by."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, model_validator

from keel.workflows.contracts.base import Effect, OmitDefaults, TimeoutAction, ToolKind, _Frozen


class RetrySpec(_Frozen):
    """A bounded retry policy. Temporal reads max_attempts=0 as "forever": refused here."""

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


class ArgRule(_Frozen):
    """A condition on one argument, checked in the workflow: `amount > 100`."""

    arg: str
    op: Literal[">", ">=", "<", "<=", "==", "!=", "in", "not in"]
    value: Any


class ApprovalPolicy(_Frozen):
    """When a human must approve a call, how long they have, and what happens if they don't.

    `rules` empty means every call; otherwise a call needs approval when any rule holds.
    """

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


class SecretRef(_Frozen):
    """A secret by name. Plans and workflow inputs carry this, never the value: an activity
    resolves it (tool_context().secret(ref)) from the environment or KEEL_SECRETS_FILE."""

    secret: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class Grant(_Frozen, OmitDefaults):
    """A scope an agent holds: a glob over scopes ("ledger:write:*", "fs:write:/data/out/*"),
    narrowed by rules on the call's arguments (all must hold): "can write" is not "anywhere".
    `*` and `?` stop at a `/`; `**` crosses any number of them (keel.shared.authz)."""

    scope: str = Field(min_length=1)
    rules: tuple[ArgRule, ...] = ()


class Ceiling(_Frozen):
    """What a delegating agent may do, which a run it delegates to may never exceed: a call
    of the child's must be one the parent's tools and grants allow too."""

    agent: str
    tools: tuple[str, ...] = ()  # empty: the parent named no tools (a plan runner)
    grants: tuple[Grant, ...] = ()


class ToolSpec(_Frozen):
    """What the workflow needs to know to schedule a tool: its policy and its argument schema."""

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
    # A write safe to run beside other calls of one model answer (reads always are).
    parallel: bool = False
    # The activity that runs the tool when it is not its own (an MCP server's tool: the one
    # keel.mcp_call activity serves them all, told the tool by name).
    activity: str | None = None
    approval: ApprovalPolicy | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    # What the tool needs, as templates filled from its arguments: "ledger:write:{account}".
    scopes: tuple[str, ...] = ()

    @property
    def runs_with_model_call(self) -> bool:
        """A quick read of the worker's own catalog that no approval of its own holds: a local
        model call may run it with its answer (PrefetchPlan; the agent's approvals are the
        workflow's to check)."""
        return (
            self.kind == "tool"
            and self.effect == "read"
            and self.local
            and not self.activity
            and self.approval is None
        )
