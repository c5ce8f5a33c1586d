"""Supervisors: Erlang/OTP supervision for agent runs. A supervisor starts its children (agent
runs, or supervisors of their own) as child workflows in declared order, and restarts them by
its strategy when they end, within a restart intensity."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, model_validator

from keel.workflows.contracts.base import RunStatus, _Frozen, _Strict
from keel.workflows.contracts.plan import PlanSpec
from keel.workflows.contracts.policy import ApprovalPolicy

# permanent: restarted whatever its end; transient: only after an abnormal end (NOT_DONE, a
# failed or terminated workflow); temporary: never.
RestartType = Literal["permanent", "transient", "temporary"]
# one_for_one: the ended child alone; one_for_all: every child (the others cancelled first,
# their writes compensated); rest_for_one: the ended child and those started after it.
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
CHILD_KEY = r"^[A-Za-z0-9_-]{1,40}$"


class ChildSpec(_Frozen):
    """One child: an agent run (an agent with a goal, or a plan) or a nested supervisor."""

    key: str = Field(pattern=CHILD_KEY)  # its name within the supervisor
    agent: str | None = None
    supervisor: str | None = None
    goal: str | None = None
    plan: PlanSpec | None = None
    restart: RestartType = "permanent"

    @model_validator(mode="after")
    def _one_kind(self) -> ChildSpec:
        if self.supervisor is not None and (self.agent is not None or self.plan is not None):
            raise ValueError(f"child {self.key!r}: a supervisor child names no agent or plan")
        if self.supervisor is None and self.agent is None and self.plan is None:
            raise ValueError(f"child {self.key!r} needs an agent, a plan or a supervisor")
        if self.agent is not None and not (self.goal or self.plan):
            raise ValueError(f"child {self.key!r}: agent {self.agent!r} needs a goal or a plan")
        return self

    @property
    def runs(self) -> str:
        """The name its run resolves on the worker (an agent, a supervisor, or the plan runner)."""
        return self.supervisor or self.agent or "plan"


class SupervisorSpec(_Frozen):
    """Declared in the worker's catalog, like agents; `starter.py run NAME --goal ...` starts
    one (the worker tells a supervisor from an agent)."""

    name: str
    description: str = ""
    strategy: Strategy = "one_for_one"
    children: tuple[ChildSpec, ...] = Field(min_length=1)
    # More than max_restarts restarts within `within` (workflow time) and the supervisor gives
    # up: "fail" ends it NOT_DONE (its children cancelled, their writes compensated),
    # "escalate" waits on a human with retry / abort.
    max_restarts: int = Field(3, ge=0)
    within: timedelta = timedelta(minutes=5)
    on_give_up: Literal["fail", "escalate"] = "fail"
    escalation: ApprovalPolicy = ApprovalPolicy(on_timeout="abort")
    # A long-lived supervisor continues as new at this history length; its children run on.
    max_history_events: int = Field(10_000, ge=50, le=45_000)

    @model_validator(mode="after")
    def _unique_keys(self) -> SupervisorSpec:
        keys = [c.key for c in self.children]
        if len(set(keys)) != len(keys):
            raise ValueError(f"supervisor {self.name!r}: child keys must be unique: {keys}")
        return self


class ChildState(_Strict):
    """A child as its supervisor's report shows it."""

    key: str
    runs: str  # the agent or supervisor it runs
    supervises: bool = False  # a nested supervisor (its report has children of its own)
    restart: RestartType
    run_id: str = ""  # the workflow id of its current (or last) run
    generation: int = 0  # runs started so far
    status: RunStatus | Literal["NOT_STARTED"] = "NOT_STARTED"
    restarts: int = 0
    reason: str = ""


class ChildEnded(_Strict):
    """What a child run tells its supervisor when it ends (signal `keel.child_ended`)."""

    key: str
    run_id: str
    status: RunStatus
    reason: str = ""
