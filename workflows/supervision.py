"""Supervision: a run whose worker-declared name is a supervisor (SupervisorSpec) starts its
children as child workflows and restarts them, Erlang/OTP style.

    report = await Supervision(state, gate).run()

Children start in declared order, each a run of its own (AgentWorkflow: an agent, a plan, or a
nested supervisor) with the workflow id `<supervisor>.<key>.<generation>`, so a restart's
idempotency keys never meet its predecessor's. A child tells its supervisor when it ends (the
`keel.child_ended` signal; in the run that started it, the child's handle says so too, which
also catches a terminated child). Its end is normal when DONE. Whether it restarts depends on
its restart type (permanent, transient, temporary); what restarts with it, on the strategy
(one_for_one, one_for_all, rest_for_one): siblings restarted with it are cancelled first and
their writes compensated, since a cancelled run undoes its writes before it ends. More than
max_restarts restarts within `within` and the supervisor gives up: it fails (cancelling every
child, newest first), or asks a human to retry or abort. Children are started with the ABANDON
parent-close policy, so a long-lived supervisor continues as new without stopping them; they
tell the supervisor's newest run when they end. Workflow code: deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ChildWorkflowError, FailureError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from keel.workflows.contracts import (
        RUN_PROTOCOL,
        AgentRunInput,
        AgentSpec,
        ChildEnded,
        ChildSpec,
        ChildState,
        RunCarry,
        RunReport,
        SupervisorSpec,
    )
    from keel.workflows.failures import child_report
    from keel.workflows.gate import HumanGate
    from keel.workflows.run_state import RunState

RUNNING = ("RUNNING", "WAITING_ON_YOU")


class Supervision:
    def __init__(self, state: RunState, gate: HumanGate) -> None:
        self.state = state
        self.gate = gate
        carry = state.run.carry
        self.restarts_at: list[datetime] = list(carry.restarts_at) if carry else []
        self.ended: list[ChildEnded] = []  # told, not yet handled
        self.stopping = False  # cancelling the tree: ends are recorded, nothing restarts
        self.final: RunReport | None = None  # set when the supervisor gave up

    @property
    def spec(self) -> SupervisorSpec:
        assert self.state.supervisor is not None
        return self.state.supervisor

    @property
    def children(self) -> list[ChildState]:
        return self.state.report.children

    def child_spec(self, key: str) -> ChildSpec:
        return next(c for c in self.spec.children if c.key == key)

    def child_ended(self, ended: ChildEnded) -> None:
        """A child's end, from its signal or its handle (whichever comes first counts)."""
        child = next((c for c in self.children if c.key == ended.key), None)
        if child is None or child.run_id != ended.run_id or child.status not in RUNNING:
            return  # an earlier generation, or told twice
        if any(e.run_id == ended.run_id for e in self.ended):
            return
        self.ended.append(ended)

    async def run(self) -> RunReport:
        state = self.state
        if state.run.carry is None:
            state.report.children = [
                ChildState(
                    key=c.key, runs=c.runs, restart=c.restart, supervises=c.supervisor is not None
                )
                for c in self.spec.children
            ]
            state.log(
                f"supervising {len(self.spec.children)} children ({self.spec.strategy}, at most "
                f"{self.spec.max_restarts} restarts within {self.spec.within})"
            )
        try:
            if state.run.carry is None:
                for child in self.children:  # a cancel meanwhile stops those started so far
                    await self.start(child)
            while True:
                await workflow.wait_condition(
                    lambda: bool(self.ended) or not self.running() or self.continuation_due()
                )
                if self.ended:
                    await self.handle(self.ended.pop(0))
                    if self.final is not None:
                        return self.final
                    continue
                if not self.running():
                    return self.finish()
                await self.continue_as_new()
        except asyncio.CancelledError:
            await self.stop("cancelled")
            return state.finish("NOT_DONE", "cancelled: every child was cancelled first")

    def running(self) -> list[ChildState]:
        return [c for c in self.children if c.status in RUNNING]

    async def start(self, child: ChildState) -> None:
        spec = self.child_spec(child.key)
        info = workflow.info()
        child.generation += 1
        child.run_id = f"{info.workflow_id}.{child.key}.{child.generation}"
        child.status, child.reason = "RUNNING", ""
        goal = spec.goal or (spec.plan.goal if spec.plan else f"supervise {spec.runs}")
        run = AgentRunInput(
            agent=AgentSpec(name=spec.runs),
            goal=goal,
            plan=spec.plan,
            status_attribute=self.state.run.status_attribute,
            draft=self.state.run.draft,
            parent=info.workflow_id,
            child_key=child.key,
            protocol=RUN_PROTOCOL,
        )
        handle = await workflow.start_child_workflow(
            "AgentWorkflow",
            run,
            id=child.run_id,
            task_queue=info.task_queue,
            result_type=RunReport,
            # The child outlives this run's continue-as-new; a cancel of the tree is explicit.
            parent_close_policy=ParentClosePolicy.ABANDON,
        )
        self.state.log(
            f"child {child.key} started: {child.run_id} ({spec.runs})",
            tool=spec.runs,
            event="child_started",
        )
        asyncio.create_task(self.watch(handle, child.key, child.run_id))  # noqa: RUF006

    async def watch(
        self, handle: workflow.ChildWorkflowHandle[Any, RunReport], key: str, run_id: str
    ) -> None:
        """The child's end as its handle sees it (a terminated child sends no signal)."""
        try:
            report: RunReport = await handle
        except ChildWorkflowError as err:
            report = child_report(err, run_id, key, "")
        self.child_ended(
            ChildEnded(key=key, run_id=run_id, status=report.status, reason=report.reason)
        )

    async def handle(self, ended: ChildEnded) -> None:
        child = next(c for c in self.children if c.key == ended.key)
        child.status, child.reason = ended.status, ended.reason
        self.state.log(
            f"child {child.key} ended {ended.status}: {ended.reason}",
            tool=child.runs,
            event="child_ended",
            outcome=ended.status,
        )
        if self.stopping:
            return
        abnormal = ended.status != "DONE"
        if child.restart == "temporary" or (child.restart == "transient" and not abnormal):
            return
        if not await self.within_intensity(child):
            return
        await self.restart(child)

    async def within_intensity(self, child: ChildState) -> bool:
        """Count this restart; past the intensity, give up (fail, or a human says retry)."""
        spec, now = self.spec, workflow.now()
        self.restarts_at = [t for t in self.restarts_at if now - t < spec.within]
        if len(self.restarts_at) < spec.max_restarts:
            self.restarts_at.append(now)
            return True
        why = (
            f"child {child.key} ended {child.status} ({child.reason}) after "
            f"{len(self.restarts_at)} restarts within {spec.within}: past max_restarts "
            f"{spec.max_restarts}"
        )
        if spec.on_give_up == "escalate":
            decision = await self.gate.ask(
                kind="escalation",
                step=0,
                tool="supervisor",
                args={"child": child.key, "restarts": len(self.restarts_at)},
                reason=f"supervisor {spec.name} would give up: {why}",
                choices=["retry", "abort"],
                policy=spec.escalation,
            )
            if decision.choice == "retry":
                self.restarts_at = [now]
                return True
        await self.stop(f"gave up: {why}")
        self.final = self.state.finish("NOT_DONE", f"gave up: {why}")
        return False

    async def restart(self, child: ChildState) -> None:
        """Restart `child` and, by the strategy, its siblings (cancelled first)."""
        strategy, order = self.spec.strategy, self.children
        at = order.index(child)
        group = (
            [child]
            if strategy == "one_for_one"
            else order
            if strategy == "one_for_all"
            else order[at:]
        )
        stopped = [c for c in group if c is not child and c.status in RUNNING]
        await self.cancel(stopped, f"{child.key} restarts")
        # The ended child and the siblings stopped for it. One that had ended already stays
        # ended; so does one that finished DONE before the cancel reached it (its writes stand,
        # and running it again would repeat them); a temporary one is never started again.
        again = [
            c
            for c in group
            if c is child or (c in stopped and c.status != "DONE" and c.restart != "temporary")
        ]
        self.state.log(f"restarting {', '.join(c.key for c in again)} ({strategy})")
        for each in again:
            each.restarts += 1
            await self.start(each)

    async def cancel(self, children: list[ChildState], why: str) -> None:
        """Cancel running children newest first, and wait until each has ended (each undoes
        its writes before it ends)."""
        if not children:
            return
        previous, self.stopping = self.stopping, True
        for child in reversed(children):
            self.state.log(f"cancelling child {child.key} ({why})")
            with contextlib.suppress(FailureError):  # it ended meanwhile: its end is coming
                await workflow.get_external_workflow_handle(child.run_id).cancel()
        cancelled = {c.run_id for c in children}
        while any(c.status in RUNNING for c in children):
            # Other children's ends wait in the queue for the main loop.
            await workflow.wait_condition(lambda: any(e.run_id in cancelled for e in self.ended))
            ended = next(e for e in self.ended if e.run_id in cancelled)
            self.ended.remove(ended)
            await self.handle(ended)
        self.stopping = previous

    async def stop(self, why: str) -> None:
        self.stopping = True
        started = sorted(self.running(), key=lambda c: self.children.index(c))
        await self.cancel(started, why)

    def finish(self) -> RunReport:
        not_done = [c for c in self.children if c.status != "DONE"]
        if not not_done:
            return self.state.finish("DONE", f"all {len(self.children)} children ended DONE")
        listed = "; ".join(f"{c.key} {c.status}: {c.reason}" for c in not_done)
        return self.state.finish("NOT_DONE", f"children not done: {listed}")

    def continuation_due(self) -> bool:
        info = workflow.info()
        return (
            info.get_current_history_length() >= self.spec.max_history_events
            or info.is_continue_as_new_suggested()
        )

    async def continue_as_new(self) -> None:
        """Carry the children's states on; running children go on and tell the new run."""
        state = self.state
        await workflow.wait_condition(workflow.all_handlers_finished)
        state.report.continued += 1
        state.log(
            f"continuing as new after {workflow.info().get_current_history_length()} events, "
            f"{len(self.running())} children running",
            event="continue_as_new",
        )
        carry = RunCarry(
            report=state.report.carried(state.segment_audit_start),
            restarts_at=self.restarts_at,
            events=list(state.events.kept),
            next_event=state.events.next_offset,
            asked=self.gate.asked,
        )
        workflow.continue_as_new(state.run.model_copy(update={"carry": carry}))
