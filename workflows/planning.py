"""Planner: where a run's agent and plan come from, and the worker's check of them before any
step runs.

    problem = await planner.resolve_agent()       # the worker's definition of the agent
    plan = run.plan or await planner.propose()    # a plan route, or keel.propose_plan
    prepared = await planner.prepare(plan)        # every tool known, arguments valid, sizes fit
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from keel.shared.tracing import annotate, model_call_attributes, span
    from keel.workflows.contracts import (
        MCP_CALL,
        AcceptanceState,
        AgentRequest,
        McpListRequest,
        McpTools,
        PlanRequest,
        PlanSpec,
        PreparedPlan,
        PrepareRequest,
        ResolvedAgent,
        StepState,
        interned,
        plan_with_agent_checks,
    )
    from keel.workflows.failures import Unwind, describe_failure
    from keel.workflows.metrics import count, observe
    from keel.workflows.model_thread import ModelThread
    from keel.workflows.run_state import RunState

# Keel's own activities (planning, checking a plan or arguments) are cheap and idempotent.
KEEL_ACTIVITY_TIMEOUT = timedelta(seconds=60)
KEEL_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1))


class Planner:
    def __init__(self, state: RunState, thread: ModelThread) -> None:
        self.state = state
        self.thread = thread
        # The worker's check that came with the resolved agent: (the plan it checked, verdict).
        self.prepared_ahead: tuple[PlanSpec | None, PreparedPlan] | None = None

    async def resolve_agent(self) -> str | None:
        """The worker's definition of the agent replaces the one in the run's input (a client
        may lower budget limits, nothing else); a continuation's tools are re-read too. Every
        segment asks again, so a carry forged by a client widens nothing."""
        state = self.state
        first = state.run.carry is None  # a continuation checks nothing again
        request = AgentRequest(
            agent=state.agent,
            tools=sorted(state.tools),
            routes=state.run.routes,
            prepare=first,
            plan=state.run.plan if first else None,
        )
        resolved = await workflow.execute_local_activity(
            "keel.resolve_agent",
            request,
            result_type=ResolvedAgent,
            start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
            retry_policy=KEEL_RETRY,
        )
        if resolved.agent is None:
            return resolved.problem or f"unknown agent {state.agent.name!r}"
        if resolved.prepared is not None:
            # The worker checked the run's plan (or the agent's tools) already; `prepare` uses
            # it for exactly that plan. A resolve recorded before this answered without it,
            # so its replay asks keel.prepare_plan as the run did.
            given = state.run.plan
            plan = None if given is None else plan_with_agent_checks(given, resolved.agent)
            self.prepared_ahead = (plan, resolved.prepared)
        state.run = state.run.model_copy(update={"agent": interned(resolved.agent)})
        state.supervisor = resolved.supervisor
        state.skill_catalog = tuple(resolved.skills)
        if state.run.carry is None:
            state.report.budget = resolved.agent.budget
        else:
            # MCP tools are the servers' (listed when the run began), not the catalog's.
            listed = {n: s for n, s in state.tools.items() if s.activity == MCP_CALL}
            state.tools = {**listed, **resolved.tools}
        return None

    async def mcp_tools(self) -> str | None:
        """List the agent's MCP servers' tools (recorded: a replay sees the same list); why
        not, when a server cannot be reached."""
        state = self.state
        try:
            listed = await workflow.execute_activity(
                "keel.mcp_tools",
                McpListRequest(agent=state.agent.name),
                result_type=McpTools,
                start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
                retry_policy=KEEL_RETRY,
            )
        except ActivityError as err:
            return f"MCP tools could not be listed: {describe_failure(err)}"
        state.tools.update(listed.tools)
        state.log(f"MCP tools listed: {', '.join(sorted(listed.tools)) or 'none'}")
        return None

    async def propose(self) -> PlanSpec:
        """A plan for the goal: from the agent's plan route, else from keel.propose_plan (a
        scripted planner of the worker)."""
        run = self.state.run
        if run.agent.routes.plan is not None:
            prepared = await self.prepare(None)
            if prepared.problems:
                raise Unwind("agent refused: " + "; ".join(prepared.problems))
            return await self.thread.plan(prepared.tools)
        self.state.log(f"asking model {run.agent.model!r} for a plan")
        # The planner's answer is a model call like any other: budgets, metrics and spans
        # count it (a scripted planner reports no tokens).
        await self.thread.budget.admit("model")
        with span("model_call", kind="plan", run_id=self.state.report.run_id) as current:
            asked_at = workflow.now()
            plan = await workflow.execute_activity(
                "keel.propose_plan",
                PlanRequest(agent=run.agent, goal=run.goal),
                result_type=PlanSpec,
                start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
                retry_policy=KEEL_RETRY,
            )
            model_call_attributes(
                current, provider="scripted", model=run.agent.model, input_tokens=0, output_tokens=0
            )
            annotate(current, model=f"scripted:{run.agent.model}", outcome="ok")
        self.state.report.used.model_calls += 1
        label = f"scripted:{run.agent.model}"
        count("model_calls", run.agent.name, model=label)
        took = (workflow.now() - asked_at).total_seconds()
        observe("model_call_duration_seconds", run.agent.name, took, model=label)
        return plan

    def load(self, plan: PlanSpec) -> None:
        """The plan becomes the run's state: unchecked steps and acceptance criteria."""
        report = self.state.report
        report.steps = [
            StepState(index=i, title=s.title, tool=s.tool, args=s.args)
            for i, s in enumerate(plan.steps, 1)
        ]
        report.acceptance = [
            AcceptanceState(criterion=c.criterion, check=c.check, args=c.args)
            for c in plan.acceptance
        ]
        self.state.log(
            f"plan has {len(plan.steps)} steps and {len(plan.acceptance)} acceptance checks"
        )

    async def prepare(self, plan: PlanSpec | None) -> PreparedPlan:
        """The worker's check of the plan (or of the agent's tools, with no plan)."""
        ahead, self.prepared_ahead = self.prepared_ahead, None
        if ahead is not None and ahead[0] == plan:
            return ahead[1]
        request = PrepareRequest(agent=self.state.agent, plan=plan)
        # A catalog lookup: a local activity spares a round trip through the server per run.
        # Runs started before this change replay as they ran. A run resolving its agent is
        # newer than this patch: asking patched() again after a local activity would put its
        # marker in another workflow task on replay.
        if self.state.agent_from_worker or workflow.patched("keel-prepare-local"):
            return await workflow.execute_local_activity(
                "keel.prepare_plan",
                request,
                result_type=PreparedPlan,
                start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
                retry_policy=KEEL_RETRY,
            )
        return await workflow.execute_activity(
            "keel.prepare_plan",
            request,
            result_type=PreparedPlan,
            start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
            retry_policy=KEEL_RETRY,
        )
