"""Compensator: when a run stops before it is done (a failure, a rejection, a cancel, a spent
budget) its completed writes are undone newest first through the saga, and it ends NOT_DONE
saying why and which compensations failed. A compensation that fails after its own retries
waits for a human (retry or skip); it is never dropped silently.

    report = await compensator.unwind("step 2 'pay zed' rejected: too much")
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.workflows.audit import audit
    from keel.workflows.contracts import CompensationState, RunReport, SagaEntry
    from keel.workflows.gate import HumanGate
    from keel.workflows.run_state import RunState
    from keel.workflows.saga import Saga


class Compensator:
    def __init__(self, state: RunState, saga: Saga, gate: HumanGate) -> None:
        self.state = state
        self.saga = saga
        self.gate = gate

    async def unwind(self, reason: str) -> RunReport:
        """Compensate completed writes, newest first, then finish NOT_DONE with the reason."""
        state = self.state
        if self.saga.entries:
            state.log(f"compensating {len(self.saga.entries)} write(s) in reverse order")
            await self.saga.compensate(
                key_prefix=state.key("saga"),
                specs=state.tools,
                on_failure=self._ask_on_failure,
                record=self._record,
            )
        failed = [c for c in state.report.compensations if c.status != "done"]
        if failed:
            reason += "; compensation failed: " + "; ".join(
                f"step {c.step} {c.compensation} ({c.error}; {c.status})" for c in failed
            )
        return state.finish("NOT_DONE", reason)

    async def _ask_on_failure(self, entry: SagaEntry, undo: CompensationState) -> str:
        decision = await self.gate.ask(
            kind="escalation",
            step=entry.step,
            tool=entry.compensation,
            args={"args": entry.args, "result": entry.result},
            reason=(
                f"compensation failed: {entry.compensation} for step {entry.step} after "
                f"{undo.attempts} attempt(s): {undo.error}"
            ),
            choices=["retry", "skip"],
            policy=self.state.agent.escalation.model_copy(update={"on_timeout": "skip"}),
        )
        return decision.choice

    def _record(self, undo: CompensationState) -> None:
        self.state.report.compensations.append(undo)
        audit(
            self.state.report,
            actor="keel",
            action="compensation",
            target=undo.compensation,
            step=undo.step,
            outcome=undo.status,
            detail=undo.error or "",
        )
        self.state.log(
            f"compensation {undo.compensation} for step {undo.step}: {undo.status}",
            step=undo.step,
            tool=undo.compensation,
            event="compensation",
            outcome=undo.status,
        )
