"""AgentWorkflow: an agent's plan as a deterministic Temporal workflow.

    await client.execute_workflow(AgentWorkflow.run, AgentRunInput(...), id=..., task_queue="keel")

The plan comes from the run's input or from a model; the worker checks it before any step runs;
each step is one tool activity under the tool's own bounded retry policy, behind an approval
gate when the tool or the agent asks for one; at the end the acceptance checks decide between
DONE and NOT_DONE. Completed writes are a saga: when the plan fails, is rejected, aborted or
cancelled, their compensations run in reverse order. The plan state lives in the workflow, so a
crashed worker's successor rebuilds it from history and carries on at the first unchecked step
without running a finished tool again. The `report` query returns that state at any moment; the
`decide` update (or signal) answers a pending approval or escalation.

This class is the shell: handlers and the order of the phases. Each job is a part of its own:
RunState (state, status, report), Planner, StepRunner, StepByStep (the model loop), ModelThread,
BudgetKeeper, HumanGate, Continuation, Verifier, Compensator (see the README's Layout).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    FailureError,
    is_cancelled_exception,
)

# Keel's deterministic workflow parts (workflow APIs only, no module state) are passed
# through, so the sandbox imports (and compiles) only this module again for each new run.
with workflow.unsafe.imports_passed_through():
    from keel.shared.errors import DecisionRefused
    from keel.shared.tracing import annotate, failed, span
    from keel.workflows.acting import StepByStep
    from keel.workflows.audit import audit
    from keel.workflows.budgets import BudgetKeeper
    from keel.workflows.compensation import Compensator
    from keel.workflows.continuation import Continuation
    from keel.workflows.contracts import (
        NOT_DONE_FAILURE,
        AcceptanceState,
        ActivityEvents,
        AgentRunInput,
        ChildEnded,
        Decision,
        EventPage,
        RunReport,
        plan_with_agent_checks,
    )
    from keel.workflows.delegation import Delegator
    from keel.workflows.edits import check_edit
    from keel.workflows.failures import Unwind, describe_failure
    from keel.workflows.gate import HumanGate
    from keel.workflows.jobs import JobHooks
    from keel.workflows.memory import MemoryHooks
    from keel.workflows.model_thread import ModelThread
    from keel.workflows.planning import Planner
    from keel.workflows.run_state import RunState
    from keel.workflows.saga import Saga
    from keel.workflows.steps import StepRunner
    from keel.workflows.supervision import Supervision
    from keel.workflows.verification import Verifier


# Outside temporalio's sandbox (a user's own workflows on the same worker keep it). The sandbox
# re-checks every payload's serialization context by exec'ing code in the run's sandbox, and
# holds a copy of module globals a run: about a quarter of a step's time when a step's model
# call and read are local activities (bench/README.md, "Outside the sandbox"). Keel's modules
# were already passed through it, so it no longer checked Keel's calls; determinism is held by
# review, `keel.shared`'s pure helpers and replaying every history the tests produce.
@workflow.defn(name="AgentWorkflow", sandboxed=False)
class AgentWorkflow:
    @workflow.init
    def __init__(self, run: AgentRunInput) -> None:
        self._state = state = RunState(run)
        carry = run.carry
        self._gate = gate = HumanGate(state.report, state.log, state.set_status, run.chain)
        if carry is not None:
            gate.asked = carry.asked
        saga = Saga(state.report.saga)
        budget = BudgetKeeper(state, gate, Counter(carry.repeats) if carry else Counter())
        thread = ModelThread(state, budget)
        self._continuation = continuation = Continuation(state, thread, budget, gate)
        self._planner = Planner(state, thread)
        self._steps = steps = StepRunner(state, gate, budget, saga)
        delegator = Delegator(state, budget, saga)
        self._acting = StepByStep(state, thread, steps, continuation, gate, delegator)
        self._verifier = Verifier(state, thread)
        self._compensator = Compensator(state, saga, gate)
        self._sources: dict[str, int] = {}  # activity_events: the last batch of each source
        self._supervision = Supervision(state, gate)
        self._jobs = JobHooks(state)
        self._memory = MemoryHooks(state)

    @workflow.query
    def report(self) -> RunReport:
        """The plan state as it stands: steps with checkboxes, progress, acceptance, status."""
        return self._state.payload()

    @workflow.query
    def events(self, since: int) -> EventPage:
        """The run's live events from offset `since` on (what `watch` and Run.events() read)."""
        return self._state.events.since(since, self._state.report.status)

    @workflow.signal(name="keel.activity_events")
    def activity_events(self, batch: ActivityEvents) -> None:
        """Events an activity publishes (a retried attempt, streamed model text), batched so
        the history gets one signal per batch, never one per token. A batch sent twice (a
        retried signal) is dropped."""
        if self._sources.get(batch.source, 0) >= batch.seq:
            return
        if len(self._sources) > 1000:  # only the calls in flight matter
            self._sources.clear()
        self._sources[batch.source] = batch.seq
        for event in batch.events:
            self._state.events.add(
                event.kind, event.message, step=event.step, tool=event.tool, data=event.data
            )

    @workflow.signal(name="keel.child_ended")
    def child_ended(self, ended: ChildEnded) -> None:
        """A supervised child run tells its supervisor (this run) that it ended."""
        self._supervision.child_ended(ended)

    @workflow.update
    async def decide(self, decision: Decision) -> str:
        """Answer the pending request; refused at once (and nothing changes) if it does not fit."""
        with span("decision", request_id=decision.request_id, choice=decision.choice):
            await check_edit(self._state.report, decision)
            try:
                self._gate.accept(decision)  # validates again: the state may have moved
            except DecisionRefused as err:  # span() marks the refusal an error
                raise ApplicationError(
                    str(err), type="DecisionRefused", non_retryable=True
                ) from None
            return f"accepted: {decision.choice} for {decision.request_id}"

    @decide.validator
    def _validate_decision(self, decision: Decision) -> None:
        self._gate.validate(decision, who=False)  # the approver is checked, and audited, above

    @workflow.update
    async def admission(self) -> str:
        """What a client starting the run waits on (update-with-start): "admitted" once the
        worker has resolved the agent and checked a given plan. A refusal fails the update
        with the reason, and the run ends NOT_DONE with nothing run."""
        state = self._state
        await workflow.wait_condition(lambda: state.admitted is not None)
        if not state.admitted:
            raise ApplicationError(
                state.report.reason,
                type="RunRefused" if state.report.refused else "RunEnded",
                non_retryable=True,
            )
        return "admitted"

    @workflow.signal
    async def decide_signal(self, decision: Decision) -> None:
        """The same decision, fire and forget: nobody hears a refusal, so it is logged in the
        progress log and audited."""
        try:
            self._gate.validate(decision)
            await check_edit(self._state.report, decision)
            self._gate.accept(decision)
        except (DecisionRefused, ApplicationError) as err:
            text = err.message if isinstance(err, ApplicationError) else str(err)
            self._state.log(f"refused decision on {decision.request_id}: {text}")
            audit(
                self._state.report,
                actor=decision.approver or "anonymous",
                action="decision_refused",
                target=decision.request_id,
                outcome="refused",
                detail=text,
            )

    @workflow.run
    async def run(self, run: AgentRunInput) -> RunReport:
        with span("run", agent=run.agent.name, run_id=self._state.report.run_id) as current:
            report = await self._memory.finish(await self._execute())
            report = await self._jobs.finish(report)
            # A client's admission (or decision) hears its answer before the run closes.
            await workflow.wait_condition(workflow.all_handlers_finished)
            if run.parent is not None:
                await self._tell_parent(run, report)
            annotate(current, status=report.status, steps=report.step_total, reason=report.reason)
            if report.status == "NOT_DONE":
                failed(current, report.reason)
        # NOT_DONE fails the workflow, carrying the report: the web UI, `temporal workflow list`
        # and the server's metrics tell it from DONE. Runs from before replay as they closed.
        if report.status == "NOT_DONE" and workflow.patched("keel-not-done-fails"):
            raise ApplicationError(
                f"NOT_DONE: {report.reason[:1000]}",
                report,
                type=NOT_DONE_FAILURE,
                non_retryable=True,
            )
        return report

    async def _tell_parent(self, run: AgentRunInput, report: RunReport) -> None:
        """A supervised run tells its supervisor's newest run how it ended."""
        assert run.parent is not None and run.child_key is not None
        ended = ChildEnded(
            key=run.child_key,
            run_id=workflow.info().workflow_id,
            status=report.status,
            reason=report.reason[:1000],
        )
        with contextlib.suppress(FailureError):  # the supervisor has closed: nobody to tell
            await workflow.get_external_workflow_handle(run.parent).signal(
                "keel.child_ended", ended
            )

    async def _execute(self) -> RunReport:
        state = self._state
        state.set_status("RUNNING")
        if state.run.carry is None:
            state.events.add("status", f"RUNNING: {state.agent.name} started: {state.run.goal}")
        try:
            if state.run.carry is not None and workflow.info().continued_run_id is None:
                # A carry is what a run hands its own continuation; from a client it could
                # claim steps, tools or compensations the run never had.
                return state.refuse("refused: a carry is written by Keel only")
            if state.run.carry is None and (skipped := await self._jobs.gate()) is not None:
                return skipped
            # Runs started before the worker became the authority on agents replay as they ran;
            # a run under protocol 1 needs no marker to say it (AgentRunInput.protocol).
            state.agent_from_worker = state.run.protocol >= 1 or workflow.patched(
                "keel-agent-from-worker"
            )
            if state.agent_from_worker:
                problem = await self._planner.resolve_agent()
                if problem is not None:
                    return state.refuse(f"agent refused: {problem}")
                if state.supervisor is not None:
                    state.admit()
                    return await self._supervision.run()
            if state.run.carry is not None or (
                state.run.plan is None and state.agent.routes.act is None
            ):
                state.admit()  # a continuation, or a plan the model proposes: nothing to check
            if state.run.plan is None and state.agent.routes.act is not None:
                return await self._act_step_by_step()
            if state.run.carry is None:
                refused = await self._plan()
                if refused is not None:
                    return refused
            return await self._run_steps()
        except Unwind as stop:
            return await self._compensator.unwind(str(stop))
        except (ActivityError, asyncio.CancelledError) as err:
            if is_cancelled_exception(err):
                # A cancelled run still undoes its writes and reports what was and wasn't done.
                return await self._compensator.unwind("cancelled before the plan finished")
            return state.finish("NOT_DONE", f"planning failed: {describe_failure(err)}")

    async def _plan(self) -> RunReport | None:
        """Load the plan (given, or proposed) and have the worker check it; the final report
        if it is refused."""
        state, run = self._state, self._state.run
        with span("plan", agent=run.agent.name, given=run.plan is not None) as planning:
            plan = run.plan or await self._planner.propose()
            plan = plan_with_agent_checks(plan, run.agent)
            self._planner.load(plan)
            prepared = await self._planner.prepare(plan)
            annotate(planning, steps=len(plan.steps), problems=len(prepared.problems))
        if prepared.problems:
            if run.plan is None:  # the model's plan: the run was admitted, the plan fails it
                return state.finish("NOT_DONE", "plan refused: " + "; ".join(prepared.problems))
            return state.refuse("plan refused: " + "; ".join(prepared.problems))
        state.tools = prepared.shared_tools()
        state.admit()
        return None

    async def _run_steps(self) -> RunReport:
        for step in self._state.report.steps:
            self._state.stop_if_cancelled()
            if not step.done and not step.skipped:
                await self._continuation.if_long()
                await self._steps.run(step)
        self._state.stop_if_cancelled()
        return await self._verifier.verify()

    async def _act_step_by_step(self) -> RunReport:
        """An agent that acts step by step: its tools are checked up front, the model chooses
        each call, and the acceptance checks decide at the end as for a plan."""
        state = self._state
        state.report.acceptance = [
            AcceptanceState(criterion=c.criterion, check=c.check, args=c.args)
            for c in state.agent.acceptance
        ]
        if state.run.carry is None:
            prepared = await self._planner.prepare(None)
            if prepared.problems:
                return state.refuse("agent refused: " + "; ".join(prepared.problems))
            state.tools = prepared.shared_tools()
            if state.agent.mcp and (problem := await self._planner.mcp_tools()) is not None:
                return state.refuse(f"agent refused: {problem}")
        state.admit()
        await self._memory.opening()
        await self._acting.act()
        state.stop_if_cancelled()
        return await self._verifier.verify()
