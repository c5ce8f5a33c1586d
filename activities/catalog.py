"""The catalog: the tools, checks, agents and scripted planners a worker offers, found in modules.

    catalog = Catalog.from_modules(["examples.ledger", "my_tools.py"])
    worker_activities = catalog.activities()

It also provides Keel's own activities, which need the catalog: `keel.prepare_plan` (the
worker's verdict on a plan, so an unknown tool is refused before any step runs) and
`keel.propose_plan` (the model call that turns a goal into a plan).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import TypeAdapter, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from keel.activities.checks import BUILTIN_CHECKS
from keel.activities.jobs import JOB_ACTIVITIES
from keel.activities.live import Publisher
from keel.activities.mcp import CONNECTIONS, AnyArgs, mcp_spec
from keel.activities.mcp import list_tools as list_mcp_tools
from keel.activities.memory.tools import (
    MEMORY_ACTIVITIES,
    MEMORY_TOOLS,
    memory_consolidator,
    plan_consolidation,
)
from keel.activities.models.context_store import answered, expand, has_conversation
from keel.activities.models.providers import PROVIDERS
from keel.activities.models.scripted import ScriptedModel, ScriptedPlanner
from keel.activities.prefetch import prefetch
from keel.activities.secrets import known_values, redact, resolved_values
from keel.activities.skills import (
    TOOLS_FILE,
    Skill,
    find_skills,
    read_skill_resource,
    snapshot,
)
from keel.activities.store import small_store_io
from keel.activities.tool import Tool, run_call
from keel.shared.bounds import MAX_ARGS_BYTES, MAX_PLAN_ARGS_BYTES, json_size
from keel.shared.errors import CatalogError
from keel.shared.tracing import content_attributes, span
from keel.workflows.contracts import (
    MCP_CALL,
    PLAN_RUNNER,
    ActingPolicy,
    ActivityEvent,
    AgentRequest,
    AgentSpec,
    ApprovalPolicy,
    ArgsCheck,
    CheckedOutput,
    LoadedSkill,
    McpListRequest,
    McpServer,
    McpTools,
    ModelReply,
    ModelRequest,
    NamedRoutes,
    OutputCheck,
    PlanRequest,
    PlanSpec,
    PreparedPlan,
    PrepareRequest,
    ResolvedAgent,
    SkillInfo,
    SkillRequest,
    SupervisorSpec,
    ToolCall,
    ToolOutput,
    ToolSpec,
    plan_with_agent_checks,
)
from keel.workflows.contracts.mcp import MCP_SEPARATOR


def explain(err: ValidationError) -> str:
    """A pydantic error in one line: `field: message; field: message`."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in err.errors())


def load_module(target: str, name: str | None = None) -> ModuleType:
    """Import a dotted module path or a .py file path (as module `name`, default
    keel_user_STEM); a declaration that fails as the module loads (a bad retry policy, say) is
    one CatalogError naming the module."""
    try:
        return _import(target, name)
    except CatalogError:
        raise
    except ValidationError as err:
        raise CatalogError(f"{target} declares something invalid: {explain(err)}") from err
    except Exception as err:
        if isinstance(err, ModuleNotFoundError) and err.name and target.startswith(err.name):
            raise CatalogError(f"no such tools module: {target} ({err})") from err
        first = str(err).splitlines()[0] if str(err) else ""
        raise CatalogError(f"{target} failed to load: {type(err).__name__}: {first}") from err


def _import(target: str, name: str | None = None) -> ModuleType:
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise CatalogError(f"no such tools file: {target}")
        name = name or f"keel_user_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise CatalogError(f"cannot import {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]  # a half-loaded module must not be found next time
            raise
        return module
    return importlib.import_module(target)


# Every worker offers memory: its tools (granted like any tool's) and the consolidator agent.
BUILTIN_MEMORY = (*MEMORY_TOOLS, memory_consolidator, plan_consolidation)

# What a tools module may declare for the worker's catalog.
Declared = Tool | AgentSpec | ScriptedPlanner | ScriptedModel | SupervisorSpec | NamedRoutes


@dataclass
class Catalog:
    tools: dict[str, Tool] = field(default_factory=dict)
    agents: dict[str, AgentSpec] = field(default_factory=dict)
    planners: dict[str, ScriptedPlanner] = field(default_factory=dict)
    models: dict[str, ScriptedModel] = field(default_factory=dict)
    supervisors: dict[str, SupervisorSpec] = field(default_factory=dict)
    routes: dict[str, NamedRoutes] = field(default_factory=dict)
    skills: dict[str, Skill] = field(default_factory=dict)
    mcp_servers: dict[str, McpServer] = field(default_factory=dict)  # from the agents

    @classmethod
    def of(cls, items: Iterable[Declared] = ()) -> Catalog:
        catalog = cls()
        for item in (*BUILTIN_CHECKS, *BUILTIN_MEMORY, *items):
            catalog.add(item)
        return catalog

    @classmethod
    def from_modules(cls, targets: Sequence[str | ModuleType]) -> Catalog:
        items: list[Any] = []
        for target in targets:
            module = load_module(target) if isinstance(target, str) else target
            items.extend(value for value in vars(module).values() if isinstance(value, Declared))
        return cls.of(items)

    def including(self, *items: Declared) -> Catalog:
        """A copy of this catalog with `items` added (say, an agent declared in a test)."""
        copy = Catalog(
            dict(self.tools),
            dict(self.agents),
            dict(self.planners),
            dict(self.models),
            dict(self.supervisors),
            dict(self.routes),
            dict(self.skills),
            dict(self.mcp_servers),
        )
        for item in items:
            copy.add(item)
        return copy

    def add_skills(self, where: Path) -> list[str]:
        """The skills in `where` (a skill directory, or a directory of them), each with the
        @tools of its tools.py, which the catalog registers (offered once the skill loads)."""
        added = []
        for skill in find_skills(where):
            if skill.name in self.skills and self.skills[skill.name].root != skill.root:
                raise CatalogError(f"two skills are named {skill.name!r}")
            tools: tuple[str, ...] = ()
            if (skill.root / TOOLS_FILE).exists():
                # Every skill's file is tools.py: each is its own module, by skill name.
                module = load_module(
                    str(skill.root / TOOLS_FILE), f"keel_skill_{skill.name.replace('-', '_')}"
                )
                found = [v for v in vars(module).values() if isinstance(v, Tool)]
                for found_tool in found:
                    self.add(found_tool)
                tools = tuple(t.name for t in found)
            self.skills[skill.name] = Skill(skill.name, skill.description, skill.root, tools)
            added.append(skill.name)
        return added

    def add(self, item: Declared) -> None:
        if isinstance(item, Tool):
            known = self.tools.get(item.name)
            if known is not None and known is not item:
                raise CatalogError(f"two tools are named {item.name!r}")
            self.tools[item.name] = item
        elif isinstance(item, AgentSpec):
            if item.name == PLAN_RUNNER.name and item != PLAN_RUNNER:
                raise CatalogError(
                    f"agent name {PLAN_RUNNER.name!r} is Keel's own (runs of a plan given up "
                    "front); choose another name"
                )
            if self.agents.get(item.name, item) != item:
                raise CatalogError(f"two agents are named {item.name!r}")
            for server in item.mcp:
                if self.mcp_servers.get(server.name, server) != server:
                    raise CatalogError(
                        f"two MCP servers are named {server.name!r} (agent {item.name!r})"
                    )
                self.mcp_servers[server.name] = server
            self.agents[item.name] = item
        elif isinstance(item, SupervisorSpec):
            if self.supervisors.get(item.name, item) != item:
                raise CatalogError(f"two supervisors are named {item.name!r}")
            self.supervisors[item.name] = item
        elif isinstance(item, NamedRoutes):
            if self.routes.get(item.name, item) != item:
                raise CatalogError(f"two sets of routes are named {item.name!r}")
            self.routes[item.name] = item
        elif isinstance(item, ScriptedModel):
            self.models[item.name] = item
        else:
            self.planners[item.agent] = item

    def agent(self, name: str) -> AgentSpec:
        try:
            return self.agents[name]
        except KeyError:
            known = ", ".join(sorted(self.agents)) or "none"
            raise CatalogError(f"unknown agent {name!r} (known: {known})") from None

    def resolve(self, requested: AgentSpec, routes: str | None = None) -> AgentSpec:
        """The agent a run may be: this catalog's definition of that name (PLAN_RUNNER for a
        plan given up front), with the budget narrowed where the run asks for less and, when
        it names them, routes this catalog offers (NamedRoutes). Nothing else a client sends
        (grants, approvals, tools, models) is trusted."""
        own = PLAN_RUNNER if requested.name == PLAN_RUNNER.name else self.agent(requested.name)
        if routes is not None:
            named = self.routes.get(routes)
            if named is None:
                known = ", ".join(sorted(self.routes)) or "none"
                raise CatalogError(f"unknown routes {routes!r} (known: {known})")
            own = own.model_copy(update={"routes": named.over(own.routes)})
        turns = requested.loop.max_turns
        loop = own.loop
        # A value at its default is no opinion: a client naming only the agent narrows nothing.
        if turns != ActingPolicy().max_turns and turns < loop.max_turns:
            loop = loop.model_copy(update={"max_turns": turns})
        return own.model_copy(
            update={"budget": own.budget.narrowed(requested.budget), "loop": loop}
        )

    def prepare(self, agent: AgentSpec, plan: PlanSpec) -> PreparedPlan:
        """Check every step and criterion against what is registered; collect every problem."""
        problems: list[str] = []
        used: dict[str, ToolSpec] = {}
        allowed = set(agent.tools)
        calls = [(f"step {i}", s.tool, s.args, "tool") for i, s in enumerate(plan.steps, 1)]
        calls += [
            (f"acceptance {c.criterion!r}", c.check, c.args, "check") for c in plan.acceptance
        ]
        for where, name, args, kind in calls:
            found = self.tools.get(name)
            if found is None or found.spec.kind != kind:
                problems.append(f"{where}: unknown {kind} {name!r}")
                continue
            if kind == "tool" and allowed and name not in allowed:
                problems.append(f"{where}: agent {agent.name!r} may not use tool {name!r}")
                continue
            try:
                found.args_model.model_validate(args)
            except ValidationError as err:
                problems.append(f"{where}: invalid arguments for {name!r}: {explain(err)}")
                continue
            used[name] = found.spec
        for spec in list(used.values()):
            problems += self._companions(spec, used)
        for policy in agent.approvals.values():
            problems += self._reminder(policy, used)
        # A plan's steps are given: the run needs each tool's policy, not the description and
        # argument schema a model reads (checked here already). Every run holds these specs in
        # the worker's cache and records them in its history: ~1 KB a tool less.
        policies = {
            name: spec.model_copy(update={"description": "", "parameters": {}})
            for name, spec in used.items()
        }
        return PreparedPlan(tools=policies, problems=problems + _oversized(calls))

    def prepare_agent(self, agent: AgentSpec) -> PreparedPlan:
        """For an agent that acts step by step: the specs of every tool it may call and of its
        acceptance checks, or why it cannot run."""
        if not (agent.tools or agent.skills or agent.delegates or agent.mcp):
            return PreparedPlan(
                problems=[
                    f"agent {agent.name!r} acts step by step and must list its tools (or "
                    "skills, MCP servers or delegates)"
                ]
            )
        problems: list[str] = []
        used: dict[str, ToolSpec] = {}
        for name in agent.tools:
            found = self.tools.get(name)
            if found is None or found.spec.kind != "tool":
                problems.append(f"agent {agent.name!r}: unknown tool {name!r}")
            else:
                used[name] = found.spec
        for criterion in agent.acceptance:
            found = self.tools.get(criterion.check)
            if found is None or found.spec.kind != "check":
                problems.append(
                    f"acceptance {criterion.criterion!r}: unknown check {criterion.check!r}"
                )
            else:
                used[criterion.check] = found.spec
        for spec in list(used.values()):
            problems += self._companions(spec, used)
        for policy in agent.approvals.values():
            problems += self._reminder(policy, used)
        return PreparedPlan(tools=used, problems=problems)

    def fingerprint(self) -> str:
        """A short hash of what this catalog serves (tool specs, agents with their MCP servers,
        supervisors, named routes, skills, scripted planners and models by name): workers on one
        task queue must agree on it, or a run's outcome would depend on which worker picked it
        up. Ten hex digits: it rides in the worker's identity, in several events of every step."""
        parts = [t.spec.model_dump_json() for _, t in sorted(self.tools.items())]
        parts += [a.model_dump_json() for _, a in sorted(self.agents.items())]
        parts += [f"planner:{n}" for n in sorted(self.planners)]
        parts += [f"model:{n}" for n in sorted(self.models)]
        parts += [s.model_dump_json() for _, s in sorted(self.supervisors.items())]
        parts += [r.model_dump_json() for _, r in sorted(self.routes.items())]
        parts += [
            f"skill:{s.name}:{s.description}:{s.tools}" for _, s in sorted(self.skills.items())
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:10]

    def check(self) -> None:
        """Refuse, in one CatalogError naming every problem, declarations that would only fail
        when a run needs them: a compensation or reminder that is not registered (or is not a
        write tool taking `args`), an agent naming a tool or check the catalog lacks."""
        problems: list[str] = []
        for found in self.tools.values():
            problems += self._companions(found.spec, {})
        for agent in self.agents.values():
            for name in agent.tools:
                if (usable := self.tools.get(name)) is None or usable.spec.kind != "tool":
                    problems.append(f"agent {agent.name!r}: unknown tool {name!r}")
            for criterion in agent.acceptance:
                if (check := self.tools.get(criterion.check)) is None or check.spec.kind != "check":
                    problems.append(f"agent {agent.name!r}: unknown check {criterion.check!r}")
            problems += [
                f"agent {agent.name!r}: delegate {name!r} is not an agent here"
                for name in agent.delegates
                if name not in self.agents
            ]
            problems += [
                f"agent {agent.name!r}: skill {name!r} is not offered here (worker.py --skills DIR)"
                for name in agent.skills
                if name not in self.skills
            ]
            if (agent.skills or agent.mcp) and agent.routes.act is None:
                problems.append(
                    f"agent {agent.name!r}: skills and MCP servers need an act route (its "
                    "model calls them)"
                )
            if agent.delegates and agent.routes.act is None:
                problems.append(
                    f"agent {agent.name!r}: delegates need an act route (its model delegates)"
                )
            if agent.output_type is not None and agent.routes.act is None:
                problems.append(
                    f"agent {agent.name!r}: output_type needs an act route (the model's finish "
                    "carries the output)"
                )
            for tool_name, policy in agent.approvals.items():
                if tool_name not in self.tools:
                    problems.append(
                        f"agent {agent.name!r}: approval for unknown tool {tool_name!r}"
                    )
                problems += [f"agent {agent.name!r}: {p}" for p in self._reminder(policy, {})]
        problems += self._supervision_problems()
        if problems:
            raise CatalogError("declarations refused: " + "; ".join(dict.fromkeys(problems)))

    def _supervision_problems(self) -> list[str]:
        """Every child names an agent or supervisor this catalog has; no supervisor contains
        itself; no name is both an agent and a supervisor."""
        problems = [
            f"{name!r} is both an agent and a supervisor"
            for name in self.supervisors
            if name in self.agents or name == PLAN_RUNNER.name
        ]
        for sup in self.supervisors.values():
            for child in sup.children:
                if child.supervisor is not None and child.supervisor not in self.supervisors:
                    problems.append(
                        f"supervisor {sup.name!r}: child {child.key!r}: unknown supervisor "
                        f"{child.supervisor!r}"
                    )
                if child.agent is not None and child.agent not in self.agents:
                    problems.append(
                        f"supervisor {sup.name!r}: child {child.key!r}: unknown agent "
                        f"{child.agent!r}"
                    )

        def nests(name: str, seen: tuple[str, ...]) -> str | None:
            if name in seen:
                return " > ".join((*seen, name))
            sup = self.supervisors.get(name)
            for child in sup.children if sup else ():
                if child.supervisor is not None and (
                    loop := nests(child.supervisor, (*seen, name))
                ):
                    return loop
            return None

        for name in self.supervisors:
            if loop := nests(name, ()):
                problems.append(f"supervisors nest in a loop: {loop}")
                break
        return problems

    def _companions(self, spec: ToolSpec, used: dict[str, ToolSpec]) -> list[str]:
        """The tools a tool relies on (its compensation, its reminder) must be registered too."""
        problems = self._reminder(spec.approval, used) if spec.approval else []
        if spec.compensation is None:
            return problems
        undo = self.tools.get(spec.compensation)
        if undo is None or undo.spec.kind != "tool":
            return [
                *problems,
                f"tool {spec.name!r}: compensation {spec.compensation!r} is not registered",
            ]
        if undo.spec.effect != "write" or "args" not in undo.args_model.model_fields:
            return [
                *problems,
                f"tool {spec.name!r}: compensation {spec.compensation!r} must "
                "be a write tool taking `args` (and optionally `result`)",
            ]
        used[undo.name] = undo.spec
        return problems

    def _reminder(self, policy: ApprovalPolicy, used: dict[str, ToolSpec]) -> list[str]:
        if policy.reminder is None:
            return []
        found = self.tools.get(policy.reminder)
        if found is None:
            return [f"reminder tool {policy.reminder!r} is not registered"]
        used[found.name] = found.spec
        return []

    def check_args(self, tool: str, args: dict[str, Any]) -> list[str]:
        if self.mcp_tool(tool) is not None:
            return []  # its server checks the arguments against the schema it published
        found = self.tools.get(tool)
        if found is None:
            return [f"unknown tool {tool!r}"]
        try:
            found.args_model.model_validate(args)
        except ValidationError as err:
            return [explain(err)]
        return []

    def mcp_tool(self, name: str) -> tuple[McpServer, str] | None:
        """The MCP server and tool a SERVER__TOOL name stands for."""
        server, sep, tool = name.partition(MCP_SEPARATOR)
        found = self.mcp_servers.get(server)
        return (found, tool) if sep and found is not None and tool else None

    def activities(self) -> list[Callable[..., Any]]:
        keel = KeelActivities(self)
        return [
            keel.resolve_agent,
            keel.prepare_plan,
            keel.propose_plan,
            keel.model_call,
            keel.check_args,
            keel.check_output,
            *JOB_ACTIVITIES,
            *MEMORY_ACTIVITIES,
            keel.load_skill,
            keel.mcp_tools,
            keel.mcp_call,
            read_skill_resource,
            *(t.activity for t in self.tools.values()),
        ]


def _oversized(calls: list[tuple[str, str, dict[str, Any], str]]) -> list[str]:
    """A plan's arguments stay in the run's state: each call's and all of them together are
    bounded (keel.shared.bounds), so the run's report always fits a payload."""
    problems = [
        f"{where}: arguments of {name!r} are {size} bytes, over the {MAX_ARGS_BYTES}-byte limit "
        "(pass large data by reference: a path, a URL, a stored blob)"
        for where, name, args, _ in calls
        if (size := json_size(args)) > MAX_ARGS_BYTES
    ]
    total = sum(json_size(args) for _, _, args, _ in calls)
    if total > MAX_PLAN_ARGS_BYTES:
        problems.append(
            f"the plan's arguments are {total} bytes in all, over the {MAX_PLAN_ARGS_BYTES}-byte "
            "limit (pass large data by reference: a path, a URL, a stored blob)"
        )
    return problems


class KeelActivities:
    """Keel's own activities, bound to a catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    @activity.defn(name="keel.resolve_agent")
    async def resolve_agent(self, request: AgentRequest) -> ResolvedAgent:
        supervisor = self.catalog.supervisors.get(request.agent.name)
        if supervisor is not None:
            # A supervisor runs as an agent with no tools of its own (see Supervision).
            agent = AgentSpec(name=supervisor.name, description=supervisor.description)
            return ResolvedAgent(agent=agent, supervisor=supervisor)
        try:
            agent = self.catalog.resolve(request.agent, request.routes)
        except CatalogError as err:
            return ResolvedAgent(problem=f"{err}: this worker does not serve it")
        tools = {n: self.catalog.tools[n].spec for n in request.tools if n in self.catalog.tools}
        skills = [
            SkillInfo(name=s.name, description=s.description)
            for name in agent.skills
            if (s := self.catalog.skills.get(name)) is not None
        ]
        prepared = None
        if request.prepare:  # keel.prepare_plan's answer, one local activity less
            plan = request.plan
            prepared = (
                self.catalog.prepare_agent(agent)
                if plan is None
                else self.catalog.prepare(agent, plan_with_agent_checks(plan, agent))
            )
        return ResolvedAgent(agent=agent, tools=tools, skills=skills, prepared=prepared)

    @activity.defn(name="keel.mcp_tools")
    async def mcp_tools(self, request: McpListRequest) -> McpTools:
        """The tools the agent's MCP servers offer now (the run records the list)."""
        agent = self.catalog.agents.get(request.agent)
        found: dict[str, ToolSpec] = {}
        for server in agent.mcp if agent is not None else ():
            found |= await list_mcp_tools(server)
        return McpTools(tools=found)

    @activity.defn(name=MCP_CALL)
    async def mcp_call(self, call: ToolCall) -> ToolOutput:
        """One MCP tool call, on the path of a native tool's (grants checked again, spans,
        retries reported, secrets redacted, large results by reference)."""
        found = self.catalog.mcp_tool(call.tool)
        if found is None:
            raise ApplicationError(
                f"no MCP server on this worker serves {call.tool!r}",
                type="UnknownTool",
                non_retryable=True,
            )
        server, tool = found

        async def invoke(**args: Any) -> Any:
            return await CONNECTIONS.call(server, tool, args)

        return await run_call(mcp_spec(server, tool), invoke, AnyArgs, call, None)

    @activity.defn(name="keel.load_skill")
    async def load_skill(self, request: SkillRequest) -> LoadedSkill:
        """The skill's body, resources and tools, snapshotted for the run asking."""
        agent = self.catalog.agents.get(request.agent)
        skill = self.catalog.skills.get(request.skill)
        if agent is None or skill is None or request.skill not in agent.skills:
            raise ApplicationError(
                f"agent {request.agent!r} may not load skill {request.skill!r} on this worker",
                type="UnknownSkill",
                non_retryable=True,
            )
        run_id = activity.info().workflow_id or request.agent
        manifest, resources, body = await asyncio.to_thread(snapshot, skill, run_id)
        tools = {name: self.catalog.tools[name].spec for name in skill.tools}
        return LoadedSkill(
            name=skill.name, manifest=manifest, body=body, resources=resources, tools=tools
        )

    @activity.defn(name="keel.prepare_plan")
    async def prepare_plan(self, request: PrepareRequest) -> PreparedPlan:
        if request.plan is None:
            return self.catalog.prepare_agent(request.agent)
        return self.catalog.prepare(request.agent, request.plan)

    @activity.defn(name="keel.model_call")
    async def model_call(self, request: ModelRequest) -> ModelReply:
        """One model call. Its recorded reply is what a replay sees: the model is never asked
        twice for the same turn."""
        if request.policy is None and request.context_ref is None:
            reply = await self._recorded(request)
        else:
            # After a worker restart, rebuilding a long conversation reads a blob per turn: in a
            # thread, whatever the store. Otherwise it reads a link or two: small store I/O.
            rebuild = not has_conversation(request)
            view, conversation, full = await (
                asyncio.to_thread(expand, request) if rebuild else small_store_io(expand, request)
            )
            reply = await self._recorded(view)
            ref = await small_store_io(answered, full, conversation, reply)
            reply = reply.model_copy(update={"context_ref": ref})
        if request.prefetch is None or not reply.tool_calls:
            return reply
        try:
            ran = await prefetch(request.prefetch, reply, self.catalog.tools)
        except Exception:  # reads run ahead to save a step's second local activity: never a
            # reason to fail (and so to ask again) the model call itself
            activity.logger.exception("the answer's quick reads were not run with the model call")
            return reply
        return reply.model_copy(update={"prefetched": ran}) if ran else reply

    async def _recorded(self, request: ModelRequest) -> ModelReply:
        """The answer; with KEEL_TRACE_CONTENT=1, also a `keel.model_exchange` span holding
        what the model was shown and what it said, every secret resolved in this worker (and
        every value of KEEL_SECRETS_FILE) redacted. Off by default: prompts hold user data."""
        if os.environ.get("KEEL_TRACE_CONTENT") != "1":
            return await self._answer(request)
        with span("model_exchange", model=request.model_ref.label, kind=request.kind) as current:
            reply = await self._answer(request)
            secrets = sorted({*resolved_values(), *known_values([])}, key=len, reverse=True)
            shown = [m.model_dump(mode="json", exclude_defaults=True) for m in request.messages]
            said = {"text": reply.text, "tool_calls": [c.model_dump() for c in reply.tool_calls]}
            content_attributes(
                current,
                prompt=redact(json.dumps({"system": request.system, "messages": shown}), secrets),
                response=redact(json.dumps(said), secrets),
            )
            return reply

    async def _answer(self, request: ModelRequest) -> ModelReply:
        ref = request.model_ref
        if ref.provider != "scripted":
            if not (ref.stream and activity.in_activity()):
                return await PROVIDERS[ref.provider](request)
            async with Publisher() as live:

                async def on_text(piece: str) -> None:
                    event = ActivityEvent(
                        kind="model_text", message=piece, data={"model": ref.label}
                    )
                    await live.add(event)

                return await PROVIDERS[ref.provider](request, on_text)
        scripted = self.catalog.models.get(ref.model)
        if scripted is None:
            raise ApplicationError(
                f"no scripted model {ref.model!r} on this worker",
                non_retryable=True,
                type="UnknownModel",
            )
        try:
            return scripted.answer(request)
        except Exception as err:
            raise ApplicationError(str(err), non_retryable=True, type="ScriptedModelError") from err

    @activity.defn(name="keel.check_args")
    async def check_args(self, request: ArgsCheck) -> list[str]:
        return self.catalog.check_args(request.tool, request.args)

    @activity.defn(name="keel.check_output")
    async def check_output(self, request: OutputCheck) -> CheckedOutput:
        agent = self.catalog.agents.get(request.agent)
        if agent is None or agent.output_type is None:
            return CheckedOutput(problem=f"agent {request.agent!r} declares no output type here")
        try:
            adapter = TypeAdapter(agent.output_type)
            output = adapter.dump_python(adapter.validate_python(request.output), mode="json")
        except ValidationError as err:
            return CheckedOutput(problem=explain(err))
        if (size := json_size(output)) > MAX_ARGS_BYTES:
            return CheckedOutput(
                problem=f"the output is {size} bytes, over the {MAX_ARGS_BYTES}-byte limit "
                "(give large data by reference: a path, a URL, a stored blob)"
            )
        return CheckedOutput(output=output)

    @activity.defn(name="keel.propose_plan")
    async def propose_plan(self, request: PlanRequest) -> PlanSpec:
        agent = request.agent
        if agent.model != "scripted":
            raise ApplicationError(
                f"model {agent.model!r} is not available on this worker",
                non_retryable=True,
                type="UnknownModel",
            )
        planner = self.catalog.planners.get(agent.name)
        if planner is None:
            raise ApplicationError(
                f"the scripted model has no script for agent {agent.name!r}",
                non_retryable=True,
                type="UnknownModel",
            )
        try:
            return planner.plan(request.goal)
        except Exception as err:
            # The scripted model is a pure function: asking again gives the same answer.
            raise ApplicationError(str(err), non_retryable=True, type="ScriptedModelError") from err
