"""AgentWorkflow: an agent's plan as a deterministic Temporal workflow.

    await client.execute_workflow(AgentWorkflow.run, AgentRunInput(...), id=..., task_queue="keel")

The plan comes from the run's input or from a model activity; the worker checks it before any
step runs; each step is one tool activity under the tool's own bounded retry policy, behind an
approval gate when the tool or the agent asks for one; at the end the acceptance checks decide
between DONE and NOT_DONE. Completed writes are a saga: when the plan fails, is rejected, aborted
or cancelled, their compensations run in reverse order. The plan state lives in the workflow, so
a crashed worker's successor rebuilds it from history and carries on at the first unchecked step
without running a finished tool again. The `report` query returns that state at any moment; the
`decide` update (or signal) answers a pending approval or escalation.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

# Keel's deterministic workflow helpers (workflow APIs only, no module state) are passed
# through, so the sandbox imports (and compiles) only this module again for each new run.
with workflow.unsafe.imports_passed_through():
    from workflows.acting import ActingMixin, Stop, extended
    from workflows.audit import audit
    from workflows.authz import authorize
    from workflows.bounds import MAX_ARGS_BYTES, PAYLOAD_LIMIT, fit, json_size
    from workflows.contracts import (
        PROGRESS_KEPT,
        STATUS_ATTRIBUTE,
        AcceptanceState,
        AgentRequest,
        AgentRunInput,
        ApprovalPolicy,
        ArgsCheck,
        CheckResult,
        Decision,
        PlanRequest,
        PlanSpec,
        PreparedPlan,
        PrepareRequest,
        ProgressEntry,
        ResolvedAgent,
        RunCarry,
        RunReport,
        RunStatus,
        SagaEntry,
        StepState,
        ToolCall,
        ToolOutput,
        ToolSpec,
        audit_kept,
    )
    from workflows.failures import attempts_made, describe_failure, retry_policy
    from workflows.gate import DecisionRefused, HumanGate, needs_approval
    from workflows.loop import recent_repeats
    from workflows.metrics import count
    from workflows.saga import Saga
    from workflows.tracing import annotate, span

# Keel's own activities (planning, checking a plan or arguments) are cheap and idempotent.
KEEL_ACTIVITY_TIMEOUT = timedelta(seconds=60)
KEEL_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1))
STATUS_KEY = SearchAttributeKey.for_keyword(STATUS_ATTRIBUTE)


class Unwind(Exception):
    """The plan stops here and completed writes are compensated; the message is the reason."""


@workflow.defn(name="AgentWorkflow")
class AgentWorkflow(ActingMixin):
    @workflow.init
    def __init__(self, run: AgentRunInput) -> None:
        self._run = run
        self._report = RunReport(
            run_id=workflow.info().workflow_id,
            agent=run.agent.name,
            goal=run.goal,
            budget=run.agent.budget,
        )
        self._turns = []
        self._repeats = Counter()
        self._threads = {}  # model conversation per step kind: (context reference, turns sent)
        self._preambles: set[str] = set()  # system prompts + tool schemas stored this run
        self._tools: dict[str, ToolSpec] = {}
        self._turn = 0
        self._segment_steps = 0  # steps run since this run (or continuation) began
        self._agent_from_worker = False
        if run.carry is not None:  # a continuation: the state carries on, the history does not
            self._report = run.carry.report
            self._tools = run.carry.tools
            self._turns = list(run.carry.turns)
            self._repeats = Counter(run.carry.repeats)
            self._threads = {kind: (ref, 0) for kind, ref in run.carry.threads.items()}
            self._turn = run.carry.turn
        self._segment_audit_start = self._report.audit_dropped + len(self._report.audit)
        self._gate = HumanGate(self._report, self._log, self._set_status)
        if run.carry is not None:
            self._gate.asked = run.carry.asked
        self._saga = Saga(self._report.saga)

    @workflow.query
    def report(self) -> RunReport:
        """The plan state as it stands: steps with checkboxes, progress, acceptance, status."""
        return self._payload()

    def _payload(self, final: bool = False) -> RunReport:
        """The report as it may leave the workflow: within PAYLOAD_LIMIT (workflows.bounds).
        One that cannot fit is cut to its summary, and a run ending with it is NOT_DONE."""
        self._report.resume_notes = self._resume_notes()
        report = self._report.compacted()
        fitted = fit(report, keep_saga=False)
        if fitted is not None:
            return fitted
        status = "NOT_DONE" if final else report.status
        why = f"its report ({json_size(report)} bytes) is over the {PAYLOAD_LIMIT}-byte limit"
        return RunReport(
            run_id=report.run_id,
            agent=report.agent,
            goal=report.goal,
            status=status,
            reason=f"{report.reason}; {why}: only this summary is kept (see starter.py show)",
            budget=report.budget,
            used=report.used,
            steps_dropped=report.step_total,
            steps_dropped_done=report.steps_done,
            continued=report.continued,
        )

    @workflow.update
    async def decide(self, decision: Decision) -> str:
        """Answer the pending request; refused at once (and nothing changes) if it does not fit."""
        await self._check_edit(decision)
        try:
            self._gate.accept(decision)  # validates again: the state may have moved meanwhile
        except DecisionRefused as err:
            raise ApplicationError(str(err), type="DecisionRefused", non_retryable=True) from None
        return f"accepted: {decision.choice} for {decision.request_id}"

    @decide.validator
    def _validate_decision(self, decision: Decision) -> None:
        self._gate.validate(decision, who=False)  # the approver is checked, and audited, above

    @workflow.signal
    async def decide_signal(self, decision: Decision) -> None:
        """The same decision, fire and forget: nobody hears a refusal, so it is logged in the
        progress log and audited."""
        try:
            self._gate.validate(decision)
            await self._check_edit(decision)
            self._gate.accept(decision)
        except (DecisionRefused, ApplicationError) as err:
            text = err.message if isinstance(err, ApplicationError) else str(err)
            self._log(f"refused decision on {decision.request_id}: {text}")
            audit(
                self._report,
                actor=decision.approver or "anonymous",
                action="decision_refused",
                target=decision.request_id,
                outcome="refused",
                detail=text,
            )

    @workflow.run
    async def run(self, run: AgentRunInput) -> RunReport:
        with span("run", agent=run.agent.name, run_id=self._report.run_id) as current:
            report = await self._execute(run)
            annotate(current, status=report.status, steps=report.step_total, reason=report.reason)
            return report

    async def _execute(self, run: AgentRunInput) -> RunReport:
        self._set_status("RUNNING")
        try:
            if run.carry is not None and workflow.info().continued_run_id is None:
                # A carry is what a run hands its own continuation; from a client it could
                # claim steps, tools or compensations the run never had.
                return self._finish("NOT_DONE", "refused: a carry is written by Keel only")
            # Runs started before the worker became the authority on agents replay as they ran.
            self._agent_from_worker = workflow.patched("keel-agent-from-worker")
            if self._agent_from_worker:
                problem = await self._resolve_agent()
                if problem is not None:
                    return self._finish("NOT_DONE", f"agent refused: {problem}")
                run = self._run
            if run.plan is None and run.agent.routes.act is not None:
                return await self._run_loop(run)
            if run.carry is not None:
                return await self._run_steps()
            with span("plan", agent=run.agent.name, given=run.plan is not None) as planning:
                plan = run.plan or await self._propose(run)
                plan = plan.model_copy(
                    update={"acceptance": [*plan.acceptance, *run.agent.acceptance]}
                )
                self._load(plan)
                prepared = await self._prepare(run, plan)
                annotate(planning, steps=len(plan.steps), problems=len(prepared.problems))
            if prepared.problems:
                return self._finish("NOT_DONE", "plan refused: " + "; ".join(prepared.problems))
            self._tools = prepared.tools
            return await self._run_steps()
        except (Unwind, Stop) as stop:
            return await self._unwind(str(stop))
        except (ActivityError, asyncio.CancelledError) as err:
            if is_cancelled_exception(err):
                # A cancelled run still undoes its writes and reports what was and wasn't done.
                return await self._unwind("cancelled before the plan finished")
            return self._finish("NOT_DONE", f"planning failed: {describe_failure(err)}")

    # --- phases ------------------------------------------------------------------------------

    async def _run_steps(self) -> RunReport:
        for step in self._report.steps:
            self._stop_if_cancelled()
            if not step.done and not step.skipped:
                await self._continue_if_long()
                await self._run_step(step)
        self._stop_if_cancelled()
        return await self._verify()

    async def _continue_if_long(self) -> None:
        """Between steps: once the history is long, continue as new with the compact state
        (same run id; the report, approvals and status keep working)."""
        info = workflow.info()
        length = info.get_current_history_length()
        agent = self._run.agent
        if self._segment_steps == 0:
            # Nothing ran since this run began: if its carried state alone is over a limit,
            # continuing again would loop; the next step runs first.
            return
        report = self._report
        audited = report.audit_dropped + len(report.audit) - self._segment_audit_start
        if (
            length < agent.max_history_events
            and info.get_current_history_size() < agent.max_history_bytes
            and audited < audit_kept() // 2  # else an entry could leave unrecorded
            and not info.is_continue_as_new_suggested()
        ):
            return
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._report.continued += 1
        self._log(f"continuing as new after {length} history events", event="continue_as_new")
        act_sent = self._threads.get("act", (None, 0))[1]
        carried = fit(
            self._report.carried(self._segment_audit_start), keep_saga=True, keep_audit=True
        )
        if carried is None:
            raise Unwind(self._too_large("its state"))
        carry = RunCarry(
            report=carried,
            tools=self._tools,
            turns=self._turns[act_sent:],
            threads={kind: ref for kind, (ref, _) in self._threads.items()},
            repeats=recent_repeats(self._repeats),
            asked=self._gate.asked,
            turn=self._turn,
        )
        if json_size(carry) > PAYLOAD_LIMIT:
            raise Unwind(self._too_large("what it would carry on with"))
        workflow.continue_as_new(
            self._run.model_copy(update={"carry": carry}),
            memo={"agent": self._run.agent.name, "goal": self._run.goal, "pending": None},
        )

    @staticmethod
    def _too_large(what: str) -> str:
        return (
            f"the run cannot continue as new: {what} is over the {PAYLOAD_LIMIT}-byte payload "
            "limit (pass large data by reference: a path, a URL, a stored blob)"
        )

    async def _run_loop(self, run: AgentRunInput) -> RunReport:
        """An agent that acts step by step: its tools are checked up front, the model chooses
        each call, and the acceptance checks decide at the end as for a plan."""
        self._report.acceptance = [
            AcceptanceState(criterion=c.criterion, check=c.check, args=c.args)
            for c in run.agent.acceptance
        ]
        if run.carry is None:
            prepared = await self._prepare(run, None)
            if prepared.problems:
                return self._finish("NOT_DONE", "agent refused: " + "; ".join(prepared.problems))
            self._tools = prepared.tools
        await self._act()
        self._stop_if_cancelled()
        return await self._verify()

    @staticmethod
    def _stop_if_cancelled() -> None:
        # A tool call waits for its activity to stop when the run is cancelled; one that
        # finished anyway returns normally (its write is on the saga stack), so the run has to
        # notice the cancel request itself rather than start the next step.
        if workflow.cancellation_reason() is not None:
            raise asyncio.CancelledError

    async def _resolve_agent(self) -> str | None:
        """The worker's definition of the agent replaces the one in the run's input (a client
        may lower budget limits, nothing else); a continuation's tools are re-read too. Every
        segment asks again, so a carry forged by a client widens nothing."""
        resolved = await workflow.execute_local_activity(
            "keel.resolve_agent",
            AgentRequest(agent=self._run.agent, tools=sorted(self._tools)),
            result_type=ResolvedAgent,
            start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
            retry_policy=KEEL_RETRY,
        )
        if resolved.agent is None:
            return resolved.problem or f"unknown agent {self._run.agent.name!r}"
        self._run = self._run.model_copy(update={"agent": resolved.agent})
        if self._run.carry is None:
            self._report.budget = resolved.agent.budget
        else:
            self._tools = resolved.tools
        return None

    async def _propose(self, run: AgentRunInput) -> PlanSpec:
        if run.agent.routes.plan is not None:
            prepared = await self._prepare(run, None)
            if prepared.problems:
                raise Stop("agent refused: " + "; ".join(prepared.problems))
            return await self._plan_with_model(prepared.tools)
        self._log(f"asking model {run.agent.model!r} for a plan")
        return await workflow.execute_activity(
            "keel.propose_plan",
            PlanRequest(agent=run.agent, goal=run.goal),
            result_type=PlanSpec,
            start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
            retry_policy=KEEL_RETRY,
        )

    def _load(self, plan: PlanSpec) -> None:
        self._report.steps = [
            StepState(index=i, title=s.title, tool=s.tool, args=s.args)
            for i, s in enumerate(plan.steps, 1)
        ]
        self._report.acceptance = [
            AcceptanceState(criterion=c.criterion, check=c.check, args=c.args)
            for c in plan.acceptance
        ]
        self._log(f"plan has {len(plan.steps)} steps and {len(plan.acceptance)} acceptance checks")

    async def _prepare(self, run: AgentRunInput, plan: PlanSpec | None) -> PreparedPlan:
        request = PrepareRequest(agent=run.agent, plan=plan)
        # The worker's check of the plan is a catalog lookup: a local activity spares a round
        # trip through the server per run. Runs started before this change replay as they ran.
        # A run resolving its agent is newer than this patch: asking patched() again after a
        # local activity would put its marker in another workflow task on replay.
        if self._agent_from_worker or workflow.patched("keel-prepare-local"):
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

    def _key(self, suffix: str) -> str:
        info = workflow.info()
        if not self._agent_from_worker:
            # Runs started before reruns existed keep their keys (run id per execution).
            return f"{info.workflow_id}:{info.first_execution_run_id}:{suffix}"
        # Stable across a rerun of the same id: a write that completed is not done again by a
        # tool that dedupes on its key, unless the rerun asked for keys of its own.
        scope = f"{self._run.key_scope}:" if self._run.key_scope else ""
        return f"{info.workflow_id}:{scope}{suffix}"

    async def _call(self, spec: ToolSpec, step: int, args: dict[str, Any]) -> ToolOutput:
        call = ToolCall(
            run_id=workflow.info().workflow_id,
            step=step,
            args=args,
            idempotency_key=self._key(str(step)),
            grants=list(self._run.agent.grants) if spec.kind == "tool" else None,
        )
        if spec.local:
            handle = workflow.start_local_activity(
                spec.name,
                call,
                result_type=ToolOutput,
                start_to_close_timeout=spec.timeout,
                retry_policy=retry_policy(spec.retry),
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        else:
            handle = workflow.start_activity(
                spec.name,
                call,
                result_type=ToolOutput,
                start_to_close_timeout=spec.timeout,
                heartbeat_timeout=spec.heartbeat,
                retry_policy=retry_policy(spec.retry),
                # A cancelled run compensates only once the in-flight call has stopped: with
                # TRY_CANCEL a write still running could land after its compensation.
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        try:
            # Shielded: a cancel of the run must not reach the call before we know whether it
            # completed. Its completion may arrive in the same activation as the cancel, and a
            # write that landed must be recorded (so it is compensated), never dropped.
            return await asyncio.shield(handle)
        except asyncio.CancelledError:
            await workflow.wait_condition(lambda: True)  # let this activation's results land
            if not handle.done():
                handle.cancel()  # still in flight: ask it to stop and wait for what it did
            # Its result if it completed (the run notices the cancel before its next call),
            # else the activity's cancellation error.
            return await handle

    def _gate_policy(self, spec: ToolSpec, args: dict[str, Any]) -> ApprovalPolicy | None:
        policies = [spec.approval, self._run.agent.approvals.get(spec.name)]
        return next((p for p in policies if p is not None and needs_approval(p, args)), None)

    async def _approve(self, step: StepState, spec: ToolSpec) -> bool:
        """False when the step is to be skipped; raises Unwind when the plan must stop."""
        policy = self._gate_policy(spec, step.args)
        if policy is None:
            return True
        decision = await self._gate.ask(
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

    async def _run_step(self, step: StepState, key: str | None = None) -> None:
        """Run one step. `key` (the loop's call key) turns on loop detection and feeds a failed
        call back to the model instead of failing the run."""
        self._segment_steps += 1
        with span("step", run_id=self._report.run_id, step=step.index, tool=step.tool) as current:
            try:
                await self._run_step_inner(step, key)
            finally:
                outcome = "done" if step.done else "skipped" if step.skipped else "failed"
                annotate(current, outcome=outcome, attempts=step.attempts, error=step.error)

    def _denied(self, step: StepState, spec: ToolSpec, key: str | None) -> bool:
        """True when the call is outside the agent's grants (recorded, audited, and told to the
        model in a loop; a plan stops)."""
        reason = authorize(spec, step.args, self._run.agent.grants)
        if reason is None:
            return False
        self._report.used.denials += 1
        step.error = f"denied: {reason}"
        audit(
            self._report,
            actor=f"agent:{self._run.agent.name}",
            action="denied",
            target=step.tool,
            step=step.index,
            outcome="denied",
            detail=reason,
        )
        self._log(
            f"step {step.index} denied: {reason}",
            step=step.index,
            tool=step.tool,
            event="policy_check",
            outcome="denied",
        )
        if key is None:
            raise Unwind(f"step {step.index} '{step.title}' denied: {reason}")
        self._skip(step, "denied; the model is told why")
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
        self._skip(step, "refused (arguments too large); the model is told why")
        return True

    async def _run_step_inner(self, step: StepState, key: str | None) -> None:
        spec = self._tools[step.tool]
        await self._pay("tool", key)  # a spent budget (denials included) stops before anything
        if self._denied(step, spec, key) or self._oversized(step, key):
            return None
        if not await self._approve(step, spec):
            return self._skip(step, "skipped at its approval deadline")
        self._report.used.steps += 1
        while True:
            # An edit may have changed the arguments: they pass the same checks again.
            if self._denied(step, spec, key) or self._oversized(step, key):
                return None
            await self._pay("tool", key)
            self._report.used.tool_calls += 1
            if key is not None:
                self._repeats[key] += 1
            step.started_at = workflow.now()
            self._log(
                f"step {step.index} started: {step.title} ({step.tool})",
                step=step.index,
                tool=step.tool,
                event="step_started",
            )
            agent = self._run.agent.name
            try:
                out = await self._call(spec, step.index, step.args)
            except ActivityError as err:
                if is_cancelled_exception(err):
                    step.error = "cancelled"
                    raise
                tried = attempts_made(err, spec)
                count("tool_calls", agent, tool=step.tool, outcome="failed")
                self._audit_call(step, "failed", describe_failure(err))
                count("tool_retries", agent, tried - 1, tool=step.tool)
                step.attempts += tried
                step.error = describe_failure(err)
                step.finished_at = workflow.now()
                failure = (
                    f"step {step.index} '{step.title}' ({step.tool}) failed after "
                    f"{step.attempts} attempt(s): {step.error}"
                )
                if self._run.agent.on_failure != "ask":
                    if key is not None:
                        return self._skip(step, f"failed, the model is told: {failure}")
                    raise Unwind(failure) from err
                if await self._escalate(step, failure):
                    continue
                return self._skip(step, "skipped by decision")
            break
        step.done, step.error = True, None
        count("tool_calls", self._run.agent.name, tool=step.tool, outcome="ok")
        self._audit_call(step, "ok", f"attempt {out.attempt}")
        count("tool_retries", self._run.agent.name, out.attempt - 1, tool=step.tool)
        step.attempts += out.attempt
        step.result, step.result_ref = out.value, out.ref
        step.finished_at = workflow.now()
        for path in out.files_touched:
            if path not in self._report.files_touched:
                self._report.files_touched.append(path)
        if spec.effect == "write" and spec.compensation:
            self._saga.push(
                SagaEntry(
                    step=step.index,
                    tool=spec.name,
                    compensation=spec.compensation,
                    args=step.args,
                    result=out.value if out.ref is None else out.ref.model_dump(),
                )
            )
        self._log(
            f"step {step.index} done after {step.attempts} attempt(s)",
            step=step.index,
            tool=step.tool,
            attempt=step.attempts,
            event="step_done",
        )

    def _audit_call(self, step: StepState, outcome: str, detail: str) -> None:
        audit(
            self._report,
            actor=f"agent:{self._run.agent.name}",
            action="tool_call",
            target=step.tool,
            step=step.index,
            outcome=outcome,
            detail=detail,
        )

    async def _escalate(self, step: StepState, failure: str) -> bool:
        """Ask a human about a failed step: True to run it again, False to skip it."""
        decision = await self._gate.ask(
            kind="escalation",
            step=step.index,
            tool=step.tool,
            args=step.args,
            reason=failure,
            choices=["retry", "skip", "abort", "edit"],
            policy=self._run.agent.escalation,
        )
        if decision.choice in ("abort", "reject"):
            raise Unwind(f"{failure}; aborted: {decision.reason}")
        if decision.choice == "edit" and decision.args is not None:
            step.args = decision.args
        return decision.choice in ("retry", "edit")

    def _skip(self, step: StepState, why: str) -> None:
        step.skipped = True
        step.finished_at = workflow.now()
        self._log(f"step {step.index} {why}")

    async def _check_edit(self, decision: Decision) -> None:
        """Edited arguments must fit the tool's schema (new limits, the budget's) before the
        decision is accepted."""
        pending = self._report.pending
        if decision.choice == "extend" and decision.args:
            extended(self._report.budget, decision.args)  # raises ApplicationError if invalid
            return
        if decision.choice != "edit" or decision.args is None or pending is None:
            return
        if (size := json_size(decision.args)) > MAX_ARGS_BYTES:
            raise ApplicationError(
                f"edited arguments are {size} bytes, over the {MAX_ARGS_BYTES} limit: pass large "
                "data by reference",
                type="InvalidEdit",
                non_retryable=True,
            )
        problems = await workflow.execute_activity(
            "keel.check_args",
            ArgsCheck(tool=pending.tool, args=decision.args),
            result_type=list[str],
            start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
            retry_policy=KEEL_RETRY,
        )
        if problems:
            raise ApplicationError(
                f"edited arguments do not fit {pending.tool}: {'; '.join(problems)}",
                type="InvalidEdit",
                non_retryable=True,
            )

    async def _check_acceptance(self) -> None:
        for index, criterion in enumerate(self._report.acceptance, 1):
            with span("acceptance", criterion=criterion.criterion, check=criterion.check) as s:
                try:
                    out = await self._call(self._tools[criterion.check], -index, criterion.args)
                    verdict = CheckResult.model_validate(out.value)
                except ActivityError as err:
                    problem = f"check failed: {describe_failure(err)}"
                    verdict = CheckResult(passed=False, detail=problem)
                annotate(s, passed=verdict.passed)
            criterion.passed, criterion.detail = verdict.passed, verdict.detail
            self._log(
                f"acceptance {criterion.criterion!r}: {'pass' if verdict.passed else 'FAIL'}",
                tool=criterion.check,
                event="acceptance",
                outcome="pass" if verdict.passed else "fail",
            )

    async def _verify(self) -> RunReport:
        report = self._report
        await self._check_acceptance()
        if self._run.agent.routes.verify is not None:
            review = await self._review_with_model()
            report.acceptance.append(review)
            self._log(f"model review: {'pass' if review.passed else 'FAIL'}: {review.detail}")
        skipped = report.step_total - report.steps_done
        settled = (
            f"all {report.step_total} steps settled ({skipped} skipped: steps "
            f"{[s.index for s in report.steps if s.skipped]})"
            if skipped
            else f"all {report.step_total} steps completed"
        )
        if not report.acceptance:
            report.verified = False
            given = self._run.plan  # a plan from the run's input, never a model's
            if self._run.agent.unverified_ok or (given is not None and given.unverified_ok):
                return self._finish(
                    "DONE", f"{settled}; unverified: no acceptance check (unverified_ok)"
                )
            return self._finish(
                "NOT_DONE",
                f"{settled}, but nothing verified the result: declare acceptance checks or a "
                "verify route, or set unverified_ok",
            )
        failed = [c for c in report.acceptance if not c.passed]
        if failed:
            return self._finish(
                "NOT_DONE",
                "acceptance failed: " + "; ".join(f"{c.criterion} ({c.detail})" for c in failed),
            )
        report.verified = True
        return self._finish(
            "DONE",
            f"{settled} and {len(report.acceptance)} acceptance checks passed",
        )

    async def _unwind(self, reason: str) -> RunReport:
        """Compensate completed writes, newest first, then finish NOT_DONE with the reason."""
        if self._saga.entries:
            self._log(f"compensating {len(self._saga.entries)} write(s) in reverse order")
            await self._saga.compensate(
                key_prefix=self._key("saga"),
                specs=self._tools,
                on_failure=self._compensation_failed,
                record=self._record_compensation,
            )
        failed = [c for c in self._report.compensations if c.status != "done"]
        if failed:
            reason += "; compensation failed: " + "; ".join(
                f"step {c.step} {c.compensation} ({c.error}; {c.status})" for c in failed
            )
        return self._finish("NOT_DONE", reason)

    async def _compensation_failed(self, entry: SagaEntry, state: Any) -> str:
        decision = await self._gate.ask(
            kind="escalation",
            step=entry.step,
            tool=entry.compensation,
            args={"args": entry.args, "result": entry.result},
            reason=(
                f"compensation failed: {entry.compensation} for step {entry.step} after "
                f"{state.attempts} attempt(s): {state.error}"
            ),
            choices=["retry", "skip"],
            policy=self._run.agent.escalation.model_copy(update={"on_timeout": "skip"}),
        )
        return decision.choice

    def _record_compensation(self, state: Any) -> None:
        self._report.compensations.append(state)
        audit(
            self._report,
            actor="keel",
            action="compensation",
            target=state.compensation,
            step=state.step,
            outcome=state.status,
            detail=state.error or "",
        )
        self._log(
            f"compensation {state.compensation} for step {state.step}: {state.status}",
            step=state.step,
            tool=state.compensation,
            event="compensation",
            outcome=state.status,
        )

    # --- state -------------------------------------------------------------------------------

    def _log(self, message: str, **fields: str | int | None) -> None:
        """One progress entry, and one log line carrying `fields` (step, event, outcome)."""
        progress = self._report.progress
        progress.append(ProgressEntry(at=workflow.now(), message=message))
        if len(progress) > PROGRESS_KEPT:
            # Bounded so the report (query result and final result) stays far below 2 MB.
            del progress[0]
            self._report.progress_dropped += 1
        # workflow.logger stays silent during replay: a decision is logged once.
        workflow.logger.info(message, extra={k: v for k, v in fields.items() if v is not None})

    def _set_status(self, status: RunStatus) -> None:
        self._report.status = status
        pending = self._report.pending
        # The memo says what the run waits for, readable with no worker running (describe).
        workflow.upsert_memo({"pending": pending.model_dump(mode="json") if pending else None})
        if self._run.status_attribute:
            workflow.upsert_search_attributes([STATUS_KEY.value_set(status)])

    def _finish(self, status: RunStatus, reason: str) -> RunReport:
        self._set_status(status)
        self._report.reason = reason
        self._log(f"{status}: {reason}", event="final", outcome=status)
        out = self._payload(final=status != "WAITING_ON_YOU")
        if out.status != status:  # the report could not fit: the run ends NOT_DONE
            self._set_status(out.status)
            self._report.reason = out.reason
        if status != "WAITING_ON_YOU":
            count("runs_finished", self._run.agent.name, status=out.status)
        return out

    def _resume_notes(self) -> str:
        report = self._report
        done = f"{report.steps_done}/{report.step_total} steps done"
        nxt = report.next_step
        if report.status == "DONE":
            return f"finished: {done}; nothing to resume"
        if report.pending is not None:
            return f"{done}; waiting on {report.pending.request_id}"
        if nxt is None:
            return f"{done}; acceptance checks next"
        where = f"step {nxt.index} '{nxt.title}' ({nxt.tool})"
        if report.status == "NOT_DONE":
            return f"{done}; stopped at {where}"
        return f"{done}; resumes at {where}"
