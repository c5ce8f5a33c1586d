"""HumanGate: a run waits, durably and for free, until a human decides or the deadline passes.

    decision = await gate.ask(kind="approval", step=2, tool="pay", args=args,
                              reason="pay above 100", choices=["approve", "reject", "edit"],
                              policy=ApprovalPolicy(timeout=timedelta(days=3)))

While it waits the run reports WAITING_ON_YOU with the pending request. A decision names the
request it answers; an approval also carries the hash of the exact call (tool and arguments)
it approves, so it cannot approve a call that changed. `validate` refuses, without changing
anything, a decision for an unknown, expired or already decided request, a choice not offered,
or an approver not on the list. At the deadline the policy's default action is taken.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from keel.workflows.audit import audit

with workflow.unsafe.imports_passed_through():
    from keel.shared.errors import DecisionRefused
    from keel.shared.rules import digest, holds
    from keel.shared.tracing import annotate, span
    from keel.workflows.contracts import (
        ApprovalPolicy,
        Choice,
        Decision,
        DecisionRecord,
        PendingRequest,
        RunReport,
        ToolCall,
    )
    from keel.workflows.metrics import count, observe

SECRET_WORDS = ("password", "secret", "token", "api_key", "apikey", "authorization", "credential")
SUMMARY_CHARS = 80
SUMMARY_ITEMS = 20  # keys of a dict, items of a list


def call_hash(tool: str, args: dict[str, Any]) -> str:
    """A stable hash of one call, what a decision is bound to: the same tool and arguments
    always give the same hash."""
    return digest({"tool": tool, "args": args})


def summarize(args: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """Arguments as a human should see them: secret-looking keys hidden, long values cut (the
    summary travels in the memo and the report, so it stays small whatever the arguments)."""
    out: dict[str, Any] = {}
    for key, value in list(args.items())[:SUMMARY_ITEMS]:
        if any(word in str(key).lower() for word in SECRET_WORDS):
            out[key] = "***"
        else:
            out[key] = _summary_of(value, depth)
    if len(args) > SUMMARY_ITEMS:
        out["..."] = f"{len(args) - SUMMARY_ITEMS} more"
    return out


def _summary_of(value: Any, depth: int) -> Any:
    if isinstance(value, str) and len(value) > SUMMARY_CHARS:
        return value[:SUMMARY_CHARS] + "..."
    if isinstance(value, dict):
        return summarize(value, depth + 1) if depth < 3 else f"{{{len(value)} keys}}"
    if isinstance(value, list | tuple):
        head = [_summary_of(v, depth + 1) for v in value[:SUMMARY_ITEMS]] if depth < 3 else []
        return head + ([f"... {len(value) - len(head)} more"] if len(value) > len(head) else [])
    return value


def needs_approval(policy: ApprovalPolicy, args: dict[str, Any]) -> bool:
    # A value a rule cannot compare is one a human should see.
    return not policy.rules or any(holds(r, args, uncomparable=True) for r in policy.rules)


class HumanGate:
    def __init__(
        self,
        report: RunReport,
        log: Callable[..., None],  # RunState.log: a message and its fields
        on_status: Callable[[Literal["RUNNING", "WAITING_ON_YOU"]], None],
        chain: Sequence[str] = (),
    ) -> None:
        self._chain = list(chain)  # a delegated run's delegators: pending requests name them
        self._report = report
        self._log = log
        self._on_status = on_status
        self._answer: Decision | None = None
        self.asked = 0

    def validate(self, decision: Decision, *, who: bool = True) -> None:
        """Raise DecisionRefused unless `decision` answers the pending request as offered."""
        pending = self._report.pending
        earlier = next(
            (d for d in self._report.decisions if d.request_id == decision.request_id), None
        )
        if earlier is not None:
            raise DecisionRefused(
                f"request {decision.request_id!r} was already decided ({earlier.choice})"
            )
        if pending is None:
            if self._report.status in ("DONE", "NOT_DONE"):
                raise DecisionRefused("the run has finished; nothing waits for a decision")
            raise DecisionRefused(f"unknown request {decision.request_id!r}: nothing is waiting")
        if decision.request_id != pending.request_id:
            raise DecisionRefused(
                f"unknown request {decision.request_id!r} (waiting on {pending.request_id!r})"
            )
        if self._answer is not None:
            raise DecisionRefused(f"request {pending.request_id!r} was already decided")
        # No clock check: a decision the server took before the deadline may reach a worker
        # after it (no worker ran meanwhile). Until the gate has acted on its deadline (then
        # `pending` is gone, or the timeout is recorded), the request is open.
        if decision.choice not in pending.choices:
            raise DecisionRefused(
                f"choice {decision.choice!r} is not offered for {pending.request_id!r} "
                f"(choices: {', '.join(pending.choices)})"
            )
        if who and pending.approvers and decision.approver not in pending.approvers:
            raise DecisionRefused(
                f"approver {decision.approver!r} may not decide {pending.request_id!r}"
            )
        if decision.args_hash is not None and decision.args_hash != pending.args_hash:
            raise DecisionRefused(
                f"the decision is for a different call (hash {decision.args_hash}, "
                f"pending {pending.args_hash}): the call changed since it was asked"
            )
        if decision.choice == "edit" and decision.args is None:
            raise DecisionRefused("edit needs the new arguments")
        if decision.choice in ("reject", "abort") and not decision.reason.strip():
            raise DecisionRefused(f"{decision.choice} needs a reason")
        if decision.choice == "answer" and not decision.reason.strip():
            raise DecisionRefused("answer needs the answer, in reason")
        if decision.choice == "extend" and not decision.args:
            raise DecisionRefused(
                "extend needs the new limits in args, e.g. {'max_tool_calls': 20}"
            )

    def accept(self, decision: Decision) -> None:
        """Take the decision, or raise DecisionRefused. An approver outside the policy's list is
        refused here, in the handler rather than the validator, so the attempt is audited."""
        try:
            self.validate(decision)
        except DecisionRefused as err:
            if "may not decide" in str(err):
                audit(
                    self._report,
                    actor=decision.approver or "anonymous",
                    action="decision_refused",
                    target=decision.request_id,
                    outcome="refused",
                    detail=str(err),
                )
            raise
        self._answer = decision

    async def ask(
        self,
        *,
        kind: Literal["approval", "escalation", "question"],
        step: int,
        tool: str,
        args: dict[str, Any],
        reason: str,
        choices: list[Choice],
        policy: ApprovalPolicy,
    ) -> Decision:
        """Wait for a decision on this call, or take the policy's default at the deadline."""
        self.asked += 1
        now = workflow.now()
        pending = PendingRequest(
            request_id=f"{kind}-{step}-{self.asked}",
            kind=kind,
            step=step,
            tool=tool,
            args_summary=summarize(args),
            args_hash=call_hash(tool, args),
            reason=reason,
            asked_at=now,
            deadline=now + policy.timeout,
            choices=choices,
            on_timeout=policy.on_timeout,
            approvers=list(policy.approvers),
            chain=self._chain,
        )
        self._answer = None
        count("human_requests", self._report.agent, kind=kind)
        self._report.pending = pending
        self._on_status("WAITING_ON_YOU")
        self._log(
            f"waiting on you: {reason} (request {pending.request_id}, until {pending.deadline})",
            step=step,
            tool=tool,
            event="approval_requested",
            outcome=pending.request_id,
        )
        with span(
            "approval_wait",
            request_id=pending.request_id,
            kind=kind,
            step=step,
            tool=tool,
            run_id=self._report.run_id,
        ) as current:
            decision = await self._wait(pending, policy)
            annotate(current, choice=decision.choice, approver=decision.approver)
        self._settle(pending, decision)
        return decision

    def _settle(self, pending: PendingRequest, decision: Decision) -> None:
        """Record the decision (report, audit, progress log) and stop waiting."""
        waited = (workflow.now() - pending.asked_at).total_seconds()
        observe(
            "approval_wait_seconds",
            self._report.agent,
            waited,
            kind=pending.kind,
            choice=decision.choice,
        )
        self._report.decisions.append(
            DecisionRecord(
                request_id=pending.request_id,
                choice="timeout" if decision.approver == "keel:deadline" else decision.choice,
                reason=decision.reason,
                approver=decision.approver,
                at=workflow.now(),
            )
        )
        audit(
            self._report,
            actor=decision.approver or "anonymous",
            action="decision",
            target=pending.request_id,
            step=pending.step,
            outcome=decision.choice,
            detail=decision.reason,
        )
        self._report.pending = None
        self._answer = None
        self._on_status("RUNNING")
        self._log(
            f"decision on {pending.request_id}: {decision.choice} {decision.reason}".strip(),
            step=pending.step,
            event="decision",
            outcome=decision.choice,
        )

    async def _wait(self, pending: PendingRequest, policy: ApprovalPolicy) -> Decision:
        remaining = policy.timeout
        if policy.remind_after is not None:
            if await self._answered_within(policy.remind_after):
                return self._take()
            remaining -= policy.remind_after
            await self._remind(pending, policy)
        if await self._answered_within(remaining):
            return self._take()
        return Decision(
            request_id=pending.request_id,
            choice=policy.on_timeout,
            reason=f"no decision by the deadline {pending.deadline}: {policy.on_timeout}",
            approver="keel:deadline",
        )

    async def _answered_within(self, timeout: timedelta) -> bool:
        try:
            await workflow.wait_condition(lambda: self._answer is not None, timeout=timeout)
        except TimeoutError:
            # A decision and the deadline's timer can land in one activation (a worker that was
            # down); the decision was taken first, so it wins over the timer.
            return self._answer is not None
        return True

    def _take(self) -> Decision:
        assert self._answer is not None
        return self._answer

    async def _remind(self, pending: PendingRequest, policy: ApprovalPolicy) -> None:
        self._log(f"reminder: {pending.request_id} still waits (deadline {pending.deadline})")
        if policy.reminder is None:
            return
        try:
            await workflow.execute_activity(
                policy.reminder,
                ToolCall(
                    run_id=workflow.info().workflow_id,
                    step=pending.step,
                    args={"request": pending.model_dump(mode="json")},
                    idempotency_key=f"{workflow.info().workflow_id}:{pending.request_id}:remind",
                ),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except ActivityError as err:  # a failed reminder must not cost the run its decision
            self._log(f"reminder {policy.reminder} failed: {err}")
