"""What crosses the activity boundary: tool calls and their outputs, and the requests of Keel's
own activities (planning, checking a plan, resolving an agent)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from keel.workflows.contracts.base import OmitDefaults, _Strict, interned
from keel.workflows.contracts.plan import AgentSpec, PlanSpec
from keel.workflows.contracts.policy import Ceiling, Grant, ToolSpec
from keel.workflows.contracts.skills import SkillInfo
from keel.workflows.contracts.supervision import SupervisorSpec


class ArgsCheck(_Strict):
    """Arguments to validate against a tool's schema (an edit from a human)."""

    tool: str
    args: dict[str, Any] = Field(default_factory=dict)


class OutputCheck(_Strict):
    """A finishing model's output, to validate against its agent's output type."""

    agent: str
    output: Any = None


class CheckedOutput(_Strict):
    """The output as the type dumps it (JSON data), or why it does not validate."""

    output: Any = None
    problem: str | None = None


class ToolCall(_Strict, OmitDefaults):
    """What a tool activity receives. The idempotency key is stable across retries and crashes."""

    run_id: str
    step: int
    args: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str
    # The agent's grants, checked again by the activity (None: a compensation, a check or a
    # reminder, which undo or read what an authorized call did).
    grants: list[Grant] | None = None
    ceilings: list[Ceiling] = Field(default_factory=list)  # a delegated run's (checked too)
    tool: str = ""  # the tool, for an activity that serves several (keel.mcp_call)


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
    routes: str | None = None  # NamedRoutes the run asks for instead of the agent's own
    # Check the run's plan (or, with none, the agent's tools) for the resolved agent in the
    # same local activity: ResolvedAgent.prepared, one local activity less at the start.
    prepare: bool = False
    plan: PlanSpec | None = None


class PreparedPlan(_Strict):
    """The worker's verdict on a plan: the specs of the tools it names, or why it is refused."""

    tools: dict[str, ToolSpec] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)

    def shared_tools(self) -> dict[str, ToolSpec]:
        """Its tool specs as a run keeps them: each the one object the worker's runs share."""
        return {name: interned(spec) for name, spec in self.tools.items()}


class ResolvedAgent(_Strict):
    """The worker's own definition of the agent, and of the tools asked for; or why not."""

    agent: AgentSpec | None = None
    tools: dict[str, ToolSpec] = Field(default_factory=dict)
    problem: str | None = None
    supervisor: SupervisorSpec | None = None  # the name is a supervisor's
    skills: list[SkillInfo] = Field(default_factory=list)  # those the agent may load
    # With AgentRequest.prepare: the worker's check of plan_with_agent_checks(request plan,
    # agent), or of the agent's tools with no plan (what keel.prepare_plan answers).
    prepared: PreparedPlan | None = None
