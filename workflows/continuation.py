"""Continuation: when a run's history grows long, it continues as new between steps with its
compact state (same run id; report, approvals and status keep working), never mid-step.

    await continuation.if_long()   # between steps and turns; returns, or continues as new

What carries on: the report (slimmed to fit a payload), the tools, the act thread's unsent
turns and context references, recent call repeats, the gate's request counter, the turn count.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.shared.bounds import PAYLOAD_LIMIT, fit, json_size
    from keel.workflows.budgets import BudgetKeeper
    from keel.workflows.contracts import EVENTS_CARRIED_BYTES, RunCarry, audit_kept
    from keel.workflows.failures import Unwind
    from keel.workflows.gate import HumanGate
    from keel.workflows.loop import recent_repeats
    from keel.workflows.model_thread import ModelThread
    from keel.workflows.run_state import RunState


class Continuation:
    def __init__(
        self, state: RunState, thread: ModelThread, budget: BudgetKeeper, gate: HumanGate
    ) -> None:
        self.state = state
        self.thread = thread
        self.budget = budget
        self.gate = gate

    def due(self) -> bool:
        """Whether the history is long enough (events, bytes, the server's hint, or audit
        entries that could otherwise leave the report unrecorded) to continue as new now."""
        state, info = self.state, workflow.info()
        if state.segment_steps == 0:
            # Nothing ran since this run began: if its carried state alone is over a limit,
            # continuing again would loop; the next step runs first.
            return False
        report, agent = state.report, state.agent
        audited = report.audit_dropped + len(report.audit) - state.segment_audit_start
        return not (
            info.get_current_history_length() < agent.max_history_events
            and info.get_current_history_size() < agent.max_history_bytes
            and audited < audit_kept() // 2
            and not info.is_continue_as_new_suggested()
        )

    async def if_long(self) -> None:
        if not self.due():
            return
        state = self.state
        length = workflow.info().get_current_history_length()
        await workflow.wait_condition(workflow.all_handlers_finished)
        await state.settled()  # a notification in flight is sent by this segment
        state.report.continued += 1
        state.log(f"continuing as new after {length} history events", event="continue_as_new")
        act_sent = self.thread.threads.get("act", (None, 0))[1]
        carried = fit(
            state.report.carried(state.segment_audit_start), keep_saga=True, keep_audit=True
        )
        if carried is None:
            raise Unwind(too_large("its state"))
        carry = RunCarry(
            report=carried,
            tools=state.tools,
            turns=self.thread.turns[act_sent:],
            threads={kind: ref for kind, (ref, _) in self.thread.threads.items()},
            repeats=recent_repeats(self.budget.repeats),
            asked=self.gate.asked,
            turn=self.thread.turn,
            events=state.events.newest(EVENTS_CARRIED_BYTES),
            next_event=state.events.next_offset,
        )
        if json_size(carry) > PAYLOAD_LIMIT:  # the live events give way first
            carry = carry.model_copy(update={"events": []})
        if json_size(carry) > PAYLOAD_LIMIT:
            raise Unwind(too_large("what it would carry on with"))
        workflow.continue_as_new(
            state.run.model_copy(update={"carry": carry}),
            memo={"agent": state.agent.name, "goal": state.run.goal, "pending": None},
        )


def too_large(what: str) -> str:
    return (
        f"the run cannot continue as new: {what} is over the {PAYLOAD_LIMIT}-byte payload "
        "limit (pass large data by reference: a path, a URL, a stored blob)"
    )
