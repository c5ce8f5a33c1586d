"""Delegator: an agent's model hands a goal to another agent (the `delegate` action), which runs
as a child workflow with its own history, plan state and report.

    text = await Delegator(state, budget, saga).delegate(action)   # what the model is told

Powers only narrow: the child carries its delegators' ceilings (tools and grants), and each of
its calls must fit every one of them as well as its own grants. Budgets roll up: the child's
limits are at most what this run has left, its usage is added to this run's, and its completed
writes join this run's saga (undone under the child's own keys if this run unwinds later). A
cancel of this run reaches the child first (it undoes its writes), then this run's own.
Workflow code: deterministic.
"""

from __future__ import annotations

import json
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ChildWorkflowError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from keel.workflows.budgets import BudgetKeeper
    from keel.workflows.contracts import (
        RUN_PROTOCOL,
        AgentRunInput,
        AgentSpec,
        Budget,
        Ceiling,
        RunReport,
        StepState,
    )
    from keel.workflows.failures import child_report
    from keel.workflows.loop import Action, call_key
    from keel.workflows.run_state import RunState
    from keel.workflows.saga import Saga


MODEL_TOLD_CHARS = 8000  # what the delegating model reads of the child's report


class Delegator:
    def __init__(self, state: RunState, budget: BudgetKeeper, saga: Saga) -> None:
        self.state = state
        self.budget = budget
        self.saga = saga

    async def delegate(self, action: Action) -> str:
        state, report = self.state, self.state.report
        info = workflow.info()
        step = StepState(
            index=report.step_total + 1,
            title=f"delegate to {action.tool}: {action.text}"[:120],
            tool="delegate",
            args={"agent": action.tool, "goal": action.text},
        )
        report.steps.append(step)
        key = call_key("delegate", step.args)
        await self.budget.admit("tool", key)  # the child's own calls are what count, later
        self.budget.repeats[key] += 1
        step.child = f"{info.workflow_id}.delegate.{step.index}"
        step.started_at = workflow.now()
        own = state.agent
        run = AgentRunInput(
            agent=AgentSpec(name=action.tool, budget=self.carved()),
            goal=action.text,
            status_attribute=state.run.status_attribute,
            draft=state.run.draft,  # a draft's delegate writes nothing either
            ceilings=(
                *state.run.ceilings,
                Ceiling(agent=own.name, tools=own.tools, grants=own.grants),
            ),
            chain=(*state.run.chain, info.workflow_id),
            protocol=RUN_PROTOCOL,
        )
        state.log(
            f"step {step.index} started: {step.title} (run {step.child})",
            step=step.index,
            tool="delegate",
            event="step_started",
        )
        # A decision sent to this run finds the delegated one waiting (keel.humans.decide).
        workflow.upsert_memo({"delegate": step.child})
        try:
            child = await self._run(run, step.child)
        finally:
            workflow.upsert_memo({"delegate": None})
        self._roll_up(child)
        step.attempts, step.finished_at = 1, workflow.now()
        step.done = child.status == "DONE"
        step.result = {
            "run_id": step.child,
            "status": child.status,
            "summary": child.summary,
            "reason": child.reason,
            "output": child.output,
        }
        state.log(
            f"step {step.index} {action.tool} ended {child.status}: {child.reason}",
            step=step.index,
            tool="delegate",
            event="step_done" if step.done else "step_failed",
            outcome=child.status,
        )
        if not step.done:
            step.error = f"{child.status}: {child.reason}"
            state.skip(step, "not done by its delegate; the model is told")
        return json.dumps(step.result, default=str)[:MODEL_TOLD_CHARS]

    async def _run(self, run: AgentRunInput, child_id: str) -> RunReport:
        """The child's report, however it ended (a cancel of this run cancels it first)."""
        try:
            return await workflow.execute_child_workflow(
                "AgentWorkflow",
                run,
                id=child_id,
                task_queue=workflow.info().task_queue,
                result_type=RunReport,
                # Should this run close abnormally, the child is asked to cancel (and undo).
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
            )
        except ChildWorkflowError as err:
            return child_report(err, child_id, run.agent.name, run.goal)

    def carved(self) -> Budget:
        """The child's limits: what this run has left of each of its own."""
        report = self.state.report
        budget, used = report.budget, report.used
        left: dict[str, Any] = {}
        for name, spent in (
            ("max_tool_calls", used.tool_calls),
            ("max_model_calls", used.model_calls),
            ("max_input_tokens", used.input_tokens),
            ("max_output_tokens", used.output_tokens),
        ):
            limit = getattr(budget, name)
            if limit is not None:
                left[name] = max(1, limit - spent)
        if budget.max_cost is not None:
            left["max_cost"] = max(budget.max_cost - used.cost, 1e-9)
        if budget.max_duration is not None:
            elapsed = workflow.now() - workflow.info().start_time
            left["max_duration"] = max(budget.max_duration - elapsed, budget.max_duration / 1000)
        return Budget(**left)

    def _roll_up(self, child: RunReport) -> None:
        """The child's usage counts against this run's budget; its completed writes join this
        run's saga (keyed as the child keyed them, so no undo happens twice)."""
        used, theirs = self.state.report.used, child.used
        used.tool_calls += theirs.tool_calls
        used.model_calls += theirs.model_calls
        used.input_tokens += theirs.input_tokens
        used.output_tokens += theirs.output_tokens
        used.cost += theirs.cost
        if child.status == "DONE":
            for entry in child.saga:
                undo_key = entry.undo_key or f"{child.run_id}:saga:{entry.step}:undo"
                self.saga.push(entry.model_copy(update={"undo_key": undo_key}))
