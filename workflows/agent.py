"""AgentWorkflow: an agent's plan as a deterministic Temporal workflow.

    await client.execute_workflow(AgentWorkflow.run, AgentRunInput(...), id=..., task_queue="keel")

The plan comes from the run's input or from a model activity; the worker checks it before any
step runs; each step is one tool activity under the tool's own bounded retry policy; at the end
the acceptance checks decide between DONE and NOT_DONE. The plan state lives in the workflow, so
a crashed worker's successor rebuilds it from history and carries on at the first unchecked step
without running a finished tool again. The `report` query returns that state at any moment.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    RetryState,
    TimeoutError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        PROGRESS_KEPT,
        AcceptanceState,
        AgentRunInput,
        CheckResult,
        PlanRequest,
        PlanSpec,
        PreparedPlan,
        PrepareRequest,
        ProgressEntry,
        RetrySpec,
        RunReport,
        RunStatus,
        StepState,
        ToolCall,
        ToolOutput,
        ToolSpec,
    )

# Keel's own activities (planning, checking the plan) are cheap and idempotent.
KEEL_ACTIVITY_TIMEOUT = timedelta(seconds=60)
KEEL_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1))


def retry_policy(spec: RetrySpec) -> RetryPolicy:
    return RetryPolicy(
        maximum_attempts=spec.max_attempts,
        initial_interval=spec.initial_interval,
        backoff_coefficient=spec.backoff_coefficient,
        maximum_interval=spec.max_interval,
        non_retryable_error_types=list(spec.non_retryable_error_types),
    )


def describe_failure(err: BaseException) -> str:
    """The innermost cause of an activity failure, in one line."""
    cause = err.cause if isinstance(err, ActivityError) and err.cause else err
    if isinstance(cause, ApplicationError):
        return f"{cause.type or 'Error'}: {cause.message}"
    if isinstance(cause, TimeoutError):
        return f"timed out ({cause.type.name.lower() if cause.type else 'timeout'})"
    return f"{type(cause).__name__}: {cause}"


def attempts_made(err: ActivityError, spec: ToolSpec) -> int:
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.details:
        detail = cause.details[0]
        if isinstance(detail, dict) and isinstance(detail.get("attempt"), int):
            return detail["attempt"]
    if err.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED:
        return spec.retry.max_attempts
    return 1


@workflow.defn(name="AgentWorkflow")
class AgentWorkflow:
    @workflow.init
    def __init__(self, run: AgentRunInput) -> None:
        self._report = RunReport(
            run_id=workflow.info().workflow_id, agent=run.agent.name, goal=run.goal
        )

    @workflow.query
    def report(self) -> RunReport:
        """The plan state as it stands: steps with checkboxes, progress, acceptance, status."""
        self._report.resume_notes = self._resume_notes()
        return self._report

    @workflow.run
    async def run(self, run: AgentRunInput) -> RunReport:
        try:
            plan = run.plan or await self._propose(run)
            plan = plan.model_copy(update={"acceptance": [*plan.acceptance, *run.agent.acceptance]})
            self._load(plan)
            prepared = await self._prepare(run, plan)
            if prepared.problems:
                return self._finish("NOT_DONE", "plan refused: " + "; ".join(prepared.problems))
            for step in self._report.steps:
                if not step.done and not await self._run_step(step, prepared.tools[step.tool]):
                    return self.report()
            return await self._verify(prepared)
        except (ActivityError, asyncio.CancelledError) as err:
            if is_cancelled_exception(err):
                # A cancelled run still ends with a report of what was done and what was not.
                return self._finish("NOT_DONE", "cancelled before the plan finished")
            return self._finish("NOT_DONE", f"planning failed: {describe_failure(err)}")

    # --- phases ------------------------------------------------------------------------------

    async def _propose(self, run: AgentRunInput) -> PlanSpec:
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

    async def _prepare(self, run: AgentRunInput, plan: PlanSpec) -> PreparedPlan:
        return await workflow.execute_activity(
            "keel.prepare_plan",
            PrepareRequest(agent=run.agent, plan=plan),
            result_type=PreparedPlan,
            start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
            retry_policy=KEEL_RETRY,
        )

    async def _call(self, spec: ToolSpec, step: int, args: dict[str, Any]) -> ToolOutput:
        info = workflow.info()
        # first_execution_run_id survives continue-as-new but differs when an id is reused,
        # so a new run with the same id never mistakes its writes for an earlier run's.
        key = f"{info.workflow_id}:{info.first_execution_run_id}:{step}"
        return await workflow.execute_activity(
            spec.name,
            ToolCall(run_id=info.workflow_id, step=step, args=args, idempotency_key=key),
            result_type=ToolOutput,
            start_to_close_timeout=spec.timeout,
            heartbeat_timeout=spec.heartbeat,
            retry_policy=retry_policy(spec.retry),
        )

    async def _run_step(self, step: StepState, spec: ToolSpec) -> bool:
        step.started_at = workflow.now()
        self._log(f"step {step.index} started: {step.title} ({step.tool})")
        try:
            out = await self._call(spec, step.index, step.args)
        except ActivityError as err:
            if is_cancelled_exception(err):
                step.error = "cancelled"
                raise
            step.attempts = attempts_made(err, spec)
            step.error = describe_failure(err)
            step.finished_at = workflow.now()
            self._finish(
                "NOT_DONE",
                f"step {step.index} '{step.title}' ({step.tool}) failed after "
                f"{step.attempts} attempt(s): {step.error}",
            )
            return False
        step.done = True
        step.attempts = out.attempt
        step.result = out.value
        step.result_ref = out.ref
        step.finished_at = workflow.now()
        for path in out.files_touched:
            if path not in self._report.files_touched:
                self._report.files_touched.append(path)
        self._log(f"step {step.index} done after {out.attempt} attempt(s)")
        return True

    async def _verify(self, prepared: PreparedPlan) -> RunReport:
        report = self._report
        if not report.acceptance:
            report.verified = False
            return self._finish(
                "DONE",
                f"all {len(report.steps)} steps completed; nothing verified the result "
                "(no acceptance criteria)",
            )
        for index, criterion in enumerate(report.acceptance, 1):
            try:
                out = await self._call(prepared.tools[criterion.check], -index, criterion.args)
                verdict = CheckResult.model_validate(out.value)
            except ActivityError as err:
                verdict = CheckResult(passed=False, detail=f"check failed: {describe_failure(err)}")
            criterion.passed, criterion.detail = verdict.passed, verdict.detail
            self._log(f"acceptance {criterion.criterion!r}: {'pass' if verdict.passed else 'FAIL'}")
        failed = [c for c in report.acceptance if not c.passed]
        if failed:
            return self._finish(
                "NOT_DONE",
                "acceptance failed: " + "; ".join(f"{c.criterion} ({c.detail})" for c in failed),
            )
        report.verified = True
        return self._finish(
            "DONE",
            f"all {len(report.steps)} steps completed and "
            f"{len(report.acceptance)} acceptance checks passed",
        )

    # --- state -------------------------------------------------------------------------------

    def _log(self, message: str) -> None:
        progress = self._report.progress
        progress.append(ProgressEntry(at=workflow.now(), message=message))
        if len(progress) > PROGRESS_KEPT:
            # Bounded so the report (query result and final result) stays far below 2 MB.
            del progress[0]
            self._report.progress_dropped += 1
        workflow.logger.info(message)  # workflow.logger stays silent during replay

    def _finish(self, status: RunStatus, reason: str) -> RunReport:
        self._report.status = status
        self._report.reason = reason
        self._log(f"{status}: {reason}")
        return self.report()

    def _resume_notes(self) -> str:
        report = self._report
        done = sum(s.done for s in report.steps)
        nxt = report.next_step
        if report.status == "DONE":
            return f"finished: {done}/{len(report.steps)} steps done; nothing to resume"
        if nxt is None:
            return f"{done}/{len(report.steps)} steps done; acceptance checks next"
        where = f"step {nxt.index} '{nxt.title}' ({nxt.tool})"
        if report.status == "NOT_DONE":
            return f"{done}/{len(report.steps)} steps done; stopped at {where}"
        return f"{done}/{len(report.steps)} steps done; resumes at {where}"
