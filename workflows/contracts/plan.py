"""Plans and agents: what a run is asked to do (a plan file, or a model's plan) and who does it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, TypeAdapter, field_validator, model_validator

from keel.workflows.contracts.base import MAX_STEPS, TOOL_NAME, _Frozen, _Strict
from keel.workflows.contracts.mcp import McpServer
from keel.workflows.contracts.memory import MemoryPolicy
from keel.workflows.contracts.models import ActingPolicy, Budget, Routes
from keel.workflows.contracts.policy import ApprovalPolicy, Grant


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


class AgentSpec(_Frozen):
    """An agent: which model plans for it, which tools it may use, what must hold at the end."""

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
    # the agent acts step by step: a model call chooses each tool call (see ActingPolicy).
    routes: Routes = Routes()
    loop: ActingPolicy = ActingPolicy()
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
    # Agents this one's model may hand a goal to (the `delegate` action): each runs as a child
    # workflow with no more powers than this agent and a budget carved out of what it has left.
    delegates: tuple[str, ...] = ()
    # A typed result: the model's finish must carry an `output` that validates against this
    # type (a pydantic model, or any type pydantic validates), checked by the worker; the report
    # carries it as data. Only the worker holds the type: the wire carries its JSON schema.
    output_type: Any = Field(None, exclude=True)
    output_schema: dict[str, Any] | None = None
    # Memory across runs: its runs start with what it remembers of its scope and leave an
    # episode (workflows/memory.py); its tools `remember`/`recall`/`forget` are granted apart.
    memory: MemoryPolicy | None = None
    # Skills the worker offers (worker.py --skills DIR) this agent may load, one at a time,
    # when its model asks (load_skill): their names and descriptions are all it sees first.
    skills: tuple[str, ...] = ()
    # MCP servers whose tools the agent may call (each SERVER__TOOL, listed when a run starts);
    # what each tool may do is declared in the server's `tools` (else: a write needing approval).
    mcp: tuple[McpServer, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _schema_of_the_output_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("output_type") is not None:
            return {**data, "output_schema": TypeAdapter(data["output_type"]).json_schema()}
        return data


# The agent of a run whose plan is given up front: no model, any registered tool.
PLAN_RUNNER = AgentSpec(
    name="plan",
    description="Runs a plan given up front; no model involved.",
    grants=(Grant(scope="**"),),  # the operator wrote the plan: every scope
)


def plan_with_agent_checks(plan: PlanSpec, agent: AgentSpec) -> PlanSpec:
    """A plan with its agent's own acceptance checks added: what the run loads and the worker
    checks (the workflow and the worker's resolve_agent build it the same way)."""
    return plan.model_copy(update={"acceptance": [*plan.acceptance, *agent.acceptance]})
