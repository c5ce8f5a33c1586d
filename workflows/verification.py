"""Verifier: done means verified. At the end of a run its acceptance checks run (activities,
read-only) and, with a verify route, a model reviews what was done; the run is DONE only when
every check passed. A run nothing verifies ends NOT_DONE unless its agent or the plan it was
given says unverified is acceptable (`unverified_ok`).

    report = await verifier.verify()
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from keel.shared.tracing import annotate, span
    from keel.workflows.contracts import CheckResult, RunReport
    from keel.workflows.failures import describe_failure
    from keel.workflows.model_thread import ModelThread
    from keel.workflows.run_state import RunState
    from keel.workflows.tool_calls import call_tool


class Verifier:
    def __init__(self, state: RunState, thread: ModelThread) -> None:
        self.state = state
        self.thread = thread

    async def check_acceptance(self) -> None:
        state = self.state
        for index, criterion in enumerate(state.report.acceptance, 1):
            with span("acceptance", criterion=criterion.criterion, check=criterion.check) as s:
                try:
                    spec = state.tools[criterion.check]
                    out = await call_tool(state, spec, -index, criterion.args)
                    verdict = CheckResult.model_validate(out.value)
                except ActivityError as err:
                    problem = f"check failed: {describe_failure(err)}"
                    verdict = CheckResult(passed=False, detail=problem)
                annotate(s, passed=verdict.passed)
            criterion.passed, criterion.detail = verdict.passed, verdict.detail
            state.log(
                f"acceptance {criterion.criterion!r}: {'pass' if verdict.passed else 'FAIL'}",
                tool=criterion.check,
                event="acceptance",
                outcome="pass" if verdict.passed else "fail",
            )

    async def verify(self) -> RunReport:
        state = self.state
        report = state.report
        if report.would_write:
            # Nothing was written: checking the result would judge a world the run left alone.
            return state.finish(
                "NOT_DONE",
                f"draft: {report.would_write} write(s) recorded as would-write and not made; "
                "acceptance not checked",
            )
        await self.check_acceptance()
        if state.agent.routes.verify is not None:
            review = await self.thread.review()
            report.acceptance.append(review)
            state.log(f"model review: {'pass' if review.passed else 'FAIL'}: {review.detail}")
        settled = self._settled()
        if not report.acceptance:
            report.verified = False
            given = state.run.plan  # a plan from the run's input, never a model's
            if state.agent.unverified_ok or (given is not None and given.unverified_ok):
                return state.finish(
                    "DONE", f"{settled}; unverified: no acceptance check (unverified_ok)"
                )
            return state.finish(
                "NOT_DONE",
                f"{settled}, but nothing verified the result: declare acceptance checks or a "
                "verify route, or set unverified_ok",
            )
        failed = [c for c in report.acceptance if not c.passed]
        if failed:
            return state.finish(
                "NOT_DONE",
                "acceptance failed: " + "; ".join(f"{c.criterion} ({c.detail})" for c in failed),
            )
        report.verified = True
        return state.finish(
            "DONE", f"{settled} and {len(report.acceptance)} acceptance checks passed"
        )

    def _settled(self) -> str:
        report = self.state.report
        skipped = report.step_total - report.steps_done
        if not skipped:
            return f"all {report.step_total} steps completed"
        return (
            f"all {report.step_total} steps settled ({skipped} skipped: steps "
            f"{[s.index for s in report.steps if s.skipped]})"
        )
