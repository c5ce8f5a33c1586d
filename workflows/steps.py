"""StepRunner: one step of a plan (or one call the model chose), from budget and grants through
its approval gate and bounded retries to the saga and the report.

    await steps.run(step)           # a plan's step: a failure, denial or rejection stops the plan
    await steps.run(step, key=key)  # a model's call: those are told to the model instead

Order, per step: the budget admits it, the grants and the payload bound allow it, a human
approves it when a gate asks, then each attempt is admitted again (an edit passes every check
again); a completed write goes on the saga stack with what its compensation needs.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

if TYPE_CHECKING:  # only the type: workflow modules import nothing else from OpenTelemetry
    from opentelemetry.trace import Span

with workflow.unsafe.imports_passed_through():
    from keel.shared.authz import authorize, within_ceilings
    from keel.shared.bounds import MAX_ARGS_BYTES, json_size
    from keel.shared.tracing import annotate, failed, span
    from keel.workflows.audit import audit
    from keel.workflows.budgets import BudgetKeeper
    from keel.workflows.contracts import ApprovalPolicy, SagaEntry, StepState, ToolOutput, ToolSpec
    from keel.workflows.failures import Unwind, attempts_made, describe_failure
    from keel.workflows.gate import HumanGate, needs_approval
    from keel.workflows.metrics import count, observe
    from keel.workflows.run_state import RunState
    from keel.workflows.saga import Saga
    from keel.workflows.tool_calls import call_tool


class StepRunner:
    def __init__(self, state: RunState, gate: HumanGate, budget: BudgetKeeper, saga: Saga) -> None:
        self.state = state
        self.gate = gate
        self.budget = budget
        self.saga = saga

    async def run(
        self,
        step: StepState,
        key: str | None = None,
        within: Span | None = None,
        reserved: bool = False,
    ) -> None:
        """Run one step. `key` (the loop's call key) turns on loop detection and feeds a failed
        call back to the model instead of failing the run; `within`, a step span already open
        (the model call that chose the step is in it); `reserved`, the budget has admitted
        and counted the call already (`reserve`, for calls that run together)."""
        self.state.segment_steps += 1
        opened = (
            nullcontext(within)
            if within is not None
            else span("step", run_id=self.state.report.run_id, step=step.index, tool=step.tool)
        )
        with opened as s:
            annotate(s, tool=step.tool)
            try:
                await self._run(step, key, reserved)
            finally:
                outcome = "done" if step.done else "skipped" if step.skipped else "failed"
                annotate(s, outcome=outcome, attempts=step.attempts, error=step.error)
                if not step.done and step.error and sys.exc_info()[0] is None:
                    failed(s, step.error, "StepFailed")  # an exception is marked by span()

    async def reserve(self, key: str) -> None:
        """Admit and count one call of several that will run together: every one of them is
        counted before any starts, so running them at once cannot overrun a budget."""
        await self.budget.admit("tool", key)
        self.state.report.used.tool_calls += 1
        self.budget.repeats[key] += 1

    def may_run_together(self, tool: str, args: dict[str, Any]) -> bool:
        """Whether a call may run beside others of the same answer: a read (or a write
        declared parallel) that its grants allow, that fits a payload and that no approval
        gate holds; any other call runs in its turn, as it always has."""
        spec = self.state.tools.get(tool)
        if spec is None or spec.kind != "tool" or self.state.agent.on_failure == "ask":
            return False  # (a failed call's escalation waits on the one human gate)
        if spec.effect == "write" and (not spec.parallel or self.state.run.draft):
            return False
        return (
            authorize(spec, args, self.state.agent.grants) is None
            and within_ceilings(spec, args, self.state.run.ceilings) is None
            and json_size(args) <= MAX_ARGS_BYTES
            and self._gate_policy(spec, args) is None
        )

    async def _run(self, step: StepState, key: str | None, reserved: bool = False) -> None:
        spec = self.state.tools[step.tool]
        if not reserved:
            await self.budget.admit("tool", key)  # a spent budget (denials included) stops first
        if self._refused(step, spec, key):
            return
        if self.state.run.draft and spec.effect == "write":
            return self._drafted(step)
        if not await self._approved(step, spec):
            return self.state.skip(step, "skipped at its approval deadline")
        self.state.report.used.steps += 1
        out = await self._call_until_settled(step, spec, key, reserved)
        if out is not None:
            self._done(step, spec, out)

    async def _call_until_settled(
        self, step: StepState, spec: ToolSpec, key: str | None, reserved: bool = False
    ) -> ToolOutput | None:
        """The call's output, or None when the step was refused or skipped."""
        state = self.state
        while True:
            # An edit may have changed the arguments: they pass the same checks again.
            if self._refused(step, spec, key):
                return None
            if not reserved:
                await self.budget.admit("tool", key)
                state.report.used.tool_calls += 1
                if key is not None:
                    self.budget.repeats[key] += 1
            reserved = False  # a retry after an escalation is admitted again
            step.started_at = workflow.now()
            state.log(
                f"step {step.index} started: {step.title} ({step.tool})",
                step=step.index,
                tool=step.tool,
                event="step_started",
            )
            try:
                return await call_tool(state, spec, step.index, step.args)
            except ActivityError as err:
                if is_cancelled_exception(err):
                    step.error = "cancelled"
                    raise
                failure = self._failed(step, spec, err)
                if state.agent.on_failure != "ask":
                    if key is not None:
                        state.skip(step, f"failed, the model is told: {failure}")
                        return None
                    raise Unwind(failure) from err
                if await self._escalate(step, failure):
                    continue
                state.skip(step, "skipped by decision")
                return None

    def _failed(self, step: StepState, spec: ToolSpec, err: ActivityError) -> str:
        """Record a call whose retries ran out; the failure, in one line."""
        tried = attempts_made(err, spec)
        agent = self.state.agent.name
        count("tool_calls", agent, tool=step.tool, outcome="failed")
        self._audit_call(step, "failed", describe_failure(err))
        count("tool_retries", agent, tried - 1, tool=step.tool)
        self._timed(step, "failed")
        step.attempts += tried
        step.error = describe_failure(err)
        step.finished_at = workflow.now()
        failure = (
            f"step {step.index} '{step.title}' ({step.tool}) failed after "
            f"{step.attempts} attempt(s): {step.error}"
        )
        self.state.log(failure, step=step.index, tool=step.tool, event="step_failed")
        return failure

    def _done(self, step: StepState, spec: ToolSpec, out: ToolOutput) -> None:
        report, agent = self.state.report, self.state.agent.name
        step.done, step.error = True, None
        count("tool_calls", agent, tool=step.tool, outcome="ok")
        self._audit_call(step, "ok", f"attempt {out.attempt}")
        count("tool_retries", agent, out.attempt - 1, tool=step.tool)
        self._timed(step, "ok")
        step.attempts += out.attempt
        step.result, step.result_ref = out.value, out.ref
        step.finished_at = workflow.now()
        for path in out.files_touched:
            if path not in report.files_touched:
                report.files_touched.append(path)
        if spec.effect == "write" and spec.compensation:
            self.saga.push(
                SagaEntry(
                    step=step.index,
                    tool=spec.name,
                    compensation=spec.compensation,
                    args=step.args,
                    result=out.value if out.ref is None else out.ref.model_dump(),
                )
            )
        self.state.log(
            f"step {step.index} done after {step.attempts} attempt(s)",
            step=step.index,
            tool=step.tool,
            attempt=step.attempts,
            event="step_done",
        )

    def _drafted(self, step: StepState) -> None:
        """Draft mode: the write is recorded with its arguments, not made (and so needs no
        approval and no compensation)."""
        state = self.state
        step.skipped = step.drafted = True
        step.result = {"draft": "not written: this run is a draft; the write is recorded"}
        step.finished_at = workflow.now()
        state.report.would_write += 1
        self._audit_call(step, "drafted", "draft mode: would write, not made")
        state.log(
            f"step {step.index} would write (draft): {step.tool} {step.args}"[:500],
            step=step.index,
            tool=step.tool,
            event="step_done",
            outcome="drafted",
        )

    def _timed(self, step: StepState, outcome: str) -> None:
        if step.started_at is not None:
            seconds = (workflow.now() - step.started_at).total_seconds()
            agent = self.state.agent.name
            observe("tool_call_duration_seconds", agent, seconds, tool=step.tool, outcome=outcome)

    def _refused(self, step: StepState, spec: ToolSpec, key: str | None) -> bool:
        return self._denied(step, spec, key) or self._oversized(step, key)

    def _denied(self, step: StepState, spec: ToolSpec, key: str | None) -> bool:
        """True when the call is outside the agent's grants (recorded, audited, and told to the
        model in a loop; a plan stops)."""
        state = self.state
        reason = authorize(spec, step.args, state.agent.grants) or within_ceilings(
            spec, step.args, state.run.ceilings
        )
        if reason is None:
            return False
        state.report.used.denials += 1
        step.error = f"denied: {reason}"
        audit(
            state.report,
            actor=f"agent:{state.agent.name}",
            action="denied",
            target=step.tool,
            step=step.index,
            outcome="denied",
            detail=reason,
        )
        state.log(
            f"step {step.index} denied: {reason}",
            step=step.index,
            tool=step.tool,
            event="policy_check",
            outcome="denied",
        )
        if key is None:
            raise Unwind(f"step {step.index} '{step.title}' denied: {reason}")
        state.skip(step, "denied; the model is told why")
        return True

    def _oversized(self, step: StepState, key: str | None) -> bool:
        """Arguments too large for a payload never reach the server: Temporal treats an
        over-limit payload as retryable, so sending it would only fail again and again."""
        size = json_size(step.args)
        if size <= MAX_ARGS_BYTES:
            return False
        step.error = (
            f"arguments of {step.tool} are {size} bytes, over the {MAX_ARGS_BYTES} limit: pass "
            "large data by reference (a path, a URL, a stored blob)"
        )
        if key is None:
            raise Unwind(f"step {step.index} '{step.title}' refused: {step.error}")
        self.state.skip(step, "refused (arguments too large); the model is told why")
        return True

    def _gate_policy(self, spec: ToolSpec, args: dict[str, Any]) -> ApprovalPolicy | None:
        policies = [spec.approval, self.state.agent.approvals.get(spec.name)]
        return next((p for p in policies if p is not None and needs_approval(p, args)), None)

    async def _approved(self, step: StepState, spec: ToolSpec) -> bool:
        """False when the step is to be skipped; raises Unwind when the plan must stop."""
        policy = self._gate_policy(spec, step.args)
        if policy is None:
            return True
        decision = await self.gate.ask(
            kind="approval",
            step=step.index,
            tool=spec.name,
            args=step.args,
            reason=f"approve step {step.index} '{step.title}' ({spec.name})",
            choices=["approve", "reject", "edit"],
            policy=policy,
        )
        if decision.choice == "edit" and decision.args is not None:
            step.args = decision.args
        if decision.choice == "skip":
            return False
        if decision.choice in ("reject", "abort"):
            raise Unwind(f"step {step.index} '{step.title}' {decision.choice}ed: {decision.reason}")
        return True

    async def _escalate(self, step: StepState, failure: str) -> bool:
        """Ask a human about a failed step: True to run it again, False to skip it."""
        decision = await self.gate.ask(
            kind="escalation",
            step=step.index,
            tool=step.tool,
            args=step.args,
            reason=failure,
            choices=["retry", "skip", "abort", "edit"],
            policy=self.state.agent.escalation,
        )
        if decision.choice in ("abort", "reject"):
            raise Unwind(f"{failure}; aborted: {decision.reason}")
        if decision.choice == "edit" and decision.args is not None:
            step.args = decision.args
        return decision.choice in ("retry", "edit")

    def _audit_call(self, step: StepState, outcome: str, detail: str) -> None:
        audit(
            self.state.report,
            actor=f"agent:{self.state.agent.name}",
            action="tool_call",
            target=step.tool,
            step=step.index,
            outcome=outcome,
            detail=detail,
        )
