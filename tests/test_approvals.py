"""Human in the loop on the time-skipping server: gates, deadlines, refusals, escalation."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

import examples.ledger as ledger
from examples.ledger import store
from keel.activities import Catalog
from keel.runs import outcome
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import (
    PLAN_RUNNER,
    AgentRunInput,
    AgentSpec,
    ApprovalPolicy,
    ArgRule,
    Decision,
    Grant,
    PendingRequest,
    PlanSpec,
    RunReport,
    StepSpec,
)
from keel.workflows.gate import call_hash
from tests import sample_tools
from tests.conftest import keel_worker, skip_time

CATALOG = Catalog.from_modules([ledger, sample_tools])
BIG = ArgRule(arg="amount", op=">", value=100)
LEDGER = (Grant(scope="ledger:*"),)


def agent(**policy: object) -> AgentSpec:
    gate = ApprovalPolicy(rules=(BIG,), timeout=timedelta(days=3), **policy)
    return AgentSpec(name="gated", approvals={"post_entry": gate}, grants=LEDGER)


def pay(account: str, amount: int) -> StepSpec:
    return StepSpec(
        title=f"pay {account}", tool="post_entry", args={"account": account, "amount": amount}
    )


async def start(
    client: Client, queue: str, steps: list[StepSpec], spec: AgentSpec | None = None
) -> WorkflowHandle:
    plan = PlanSpec(goal="gated", steps=steps, unverified_ok=True)
    return await client.start_workflow(
        AgentWorkflow.run,
        AgentRunInput(agent=spec or agent(), goal=plan.goal, plan=plan),
        id=f"gate-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
    )


async def waiting(handle: WorkflowHandle) -> RunReport:
    for _ in range(400):
        report = await handle.query(AgentWorkflow.report)
        if report.pending is not None:
            return report
        await asyncio.sleep(0.025)
    raise AssertionError("the run never waited on a human")


async def asked(handle: WorkflowHandle) -> PendingRequest:
    """The request the run waits on, once it waits."""
    pending = (await waiting(handle)).pending
    assert pending is not None
    return pending


async def refused(handle: WorkflowHandle, decision: Decision, message: str) -> None:
    before = await handle.query(AgentWorkflow.report)
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await handle.execute_update(AgentWorkflow.decide, decision)
    assert message in str(caught.value.cause), caught.value.cause
    after = await handle.query(AgentWorkflow.report)
    assert (after.pending, after.decisions, after.status) == (
        before.pending,
        before.decisions,
        before.status,
    )


async def test_gated_step_waits_with_the_request_then_runs_when_approved(
    ts_client: Client, ledger_db: Path
) -> None:
    async with keel_worker(ts_client, CATALOG, agent()) as queue:
        handle = await start(ts_client, queue, [pay("amy", 50), pay("bo", 500)])
        report = await waiting(handle)
        pending = report.pending
        assert pending is not None
        assert report.status == "WAITING_ON_YOU"
        assert [s.done for s in report.steps] == [True, False]  # the cheap step did not wait
        assert (pending.kind, pending.step, pending.tool) == ("approval", 2, "post_entry")
        assert pending.args_summary == {"account": "bo", "amount": 500}
        assert pending.args_hash == call_hash("post_entry", {"account": "bo", "amount": 500})
        assert pending.deadline - pending.asked_at == timedelta(days=3)
        assert pending.choices == ["approve", "reject", "edit"]
        assert store.balances() == {"amy": 50}
        answer = await handle.execute_update(
            AgentWorkflow.decide,
            Decision(
                request_id=pending.request_id,
                choice="approve",
                args_hash=pending.args_hash,
                approver="ops@example.com",
            ),
        )
        assert answer == f"accepted: approve for {pending.request_id}"
        final = await outcome(handle)
    assert final.status == "DONE" and final.pending is None
    assert [(d.choice, d.approver) for d in final.decisions] == [("approve", "ops@example.com")]
    assert store.balances() == {"amy": 50, "bo": 500}


async def test_three_day_deadline_passes_in_test_time_and_rejects(
    ts_client: Client, ledger_db: Path
) -> None:
    async with keel_worker(ts_client, CATALOG, agent()) as queue:
        handle = await start(ts_client, queue, [pay("cy", 5), pay("di", 500)])
        asked = (await waiting(handle)).pending
        assert asked is not None
        final = await outcome(handle)  # the test server skips the three days
    assert asked is not None
    # Three days of workflow time passed (the run decided at its deadline, not before).
    assert final.decisions[0].at - asked.asked_at >= timedelta(days=3)
    assert final.status == "NOT_DONE"
    assert final.reason.startswith("step 2 'pay di' rejected: no decision by the deadline")
    assert [d.choice for d in final.decisions] == ["timeout"]
    assert store.balances() == {"cy": 0}  # step 1 compensated after the rejection


async def test_deadline_default_skip_and_reminder(ts_client: Client, ledger_db: Path) -> None:
    spec = agent(on_timeout="skip", remind_after=timedelta(days=1), reminder="notify")
    async with keel_worker(ts_client, CATALOG, spec) as queue:
        handle = await start(ts_client, queue, [pay("ed", 500), pay("fay", 600)], spec)
        request = (await asked(handle)).request_id
        await skip_time(ts_client, timedelta(days=3, minutes=1))  # past reminder and deadline
        for _ in range(400):  # step 2 then waits on a request of its own
            second = (await handle.query(AgentWorkflow.report)).pending
            if second is not None and second.request_id != request:
                break
            await asyncio.sleep(0.025)
        assert second is not None
        late = Decision(request_id=request, choice="approve")
        await refused(handle, late, f"request {request!r} was already decided (timeout)")
        await handle.execute_update(
            AgentWorkflow.decide, Decision(request_id=second.request_id, choice="approve")
        )
        final = await outcome(handle)
    assert final.status == "DONE"
    assert "1 skipped: steps [1]" in final.reason
    assert store.balances() == {"fay": 600}
    assert final.steps[0].skipped and not final.steps[0].done
    assert sample_tools.CALLS[f"notify:{request}"] == 1
    assert any(p.message.startswith(f"reminder: {request}") for p in final.progress)


async def test_refused_decisions_change_nothing(ts_client: Client, ledger_db: Path) -> None:
    spec = agent(approvers=("ops@example.com",))
    async with keel_worker(ts_client, CATALOG, spec) as queue:
        handle = await start(ts_client, queue, [pay("gus", 500)], spec)
        pending = (await waiting(handle)).pending
        assert pending is not None
        rid = pending.request_id
        ok = {"request_id": rid, "approver": "ops@example.com"}
        await refused(
            handle,
            Decision(request_id="approval-9-9", choice="approve", approver="ops@example.com"),
            f"unknown request 'approval-9-9' (waiting on '{rid}')",
        )
        await refused(handle, Decision(**ok, choice="retry"), "choice 'retry' is not offered")
        await refused(
            handle,
            Decision(request_id=rid, choice="approve", approver="mallory"),
            "approver 'mallory' may not decide",
        )
        await refused(
            handle,
            Decision(**ok, choice="approve", args_hash="0" * 16),
            "the decision is for a different call",
        )
        await refused(handle, Decision(**ok, choice="reject"), "reject needs a reason")
        await refused(
            handle,
            Decision(**ok, choice="edit", args={"account": "gus"}),
            "edited arguments do not fit post_entry: amount: Field required",
        )
        await handle.execute_update(
            AgentWorkflow.decide, Decision(**ok, choice="reject", reason="too much")
        )
        final = await outcome(handle)
        with pytest.raises((RPCError, WorkflowUpdateFailedError)):  # the run has finished
            await handle.execute_update(AgentWorkflow.decide, Decision(**ok, choice="approve"))
    assert final.status == "NOT_DONE"
    assert final.reason == "step 1 'pay gus' rejected: too much"
    assert [d.choice for d in final.decisions] == ["reject"]
    assert store.balances() == {}


async def test_edited_arguments_are_what_runs(ts_client: Client, ledger_db: Path) -> None:
    async with keel_worker(ts_client, CATALOG, agent()) as queue:
        handle = await start(ts_client, queue, [pay("hal", 900)])
        rid = (await asked(handle)).request_id
        await handle.execute_update(
            AgentWorkflow.decide,
            Decision(request_id=rid, choice="edit", args={"account": "hal", "amount": 90}),
        )
        final = await outcome(handle)
    assert final.status == "DONE"
    assert final.steps[0].args == {"account": "hal", "amount": 90}
    assert store.balances() == {"hal": 90}


async def test_signals_decide_too_and_a_duplicate_is_refused(
    ts_client: Client, ledger_db: Path
) -> None:
    async with keel_worker(ts_client, CATALOG, agent()) as queue:
        handle = await start(ts_client, queue, [pay("ivy", 500), pay("jo", 500)])
        first = (await asked(handle)).request_id
        await handle.signal(
            AgentWorkflow.decide_signal, Decision(request_id=first, choice="approve")
        )
        await handle.signal(
            AgentWorkflow.decide_signal, Decision(request_id=first, choice="approve")
        )
        for _ in range(400):
            second = (await handle.query(AgentWorkflow.report)).pending
            if second is not None and second.request_id != first:
                break
            await asyncio.sleep(0.025)
        assert second is not None
        await handle.signal(
            AgentWorkflow.decide_signal, Decision(request_id=second.request_id, choice="approve")
        )
        final = await outcome(handle)
    assert final.status == "DONE"
    assert [d.request_id for d in final.decisions] == [first, second.request_id]
    assert any(
        f"refused decision on {first}: request '{first}' was already decided" in p.message
        for p in final.progress
    )


async def test_tool_declared_gate_hides_secret_looking_args(
    ts_client: Client, ledger_db: Path
) -> None:
    step = StepSpec(
        title="mail",
        tool="send_email",
        args={"to": "a@b.c", "body": "x" * 200, "api_token": "s3cr3t"},
    )
    async with keel_worker(ts_client, CATALOG, agent()) as queue:
        handle = await start(ts_client, queue, [step], PLAN_RUNNER)
        pending = (await waiting(handle)).pending
        assert pending is not None
        assert pending.args_summary == {"to": "a@b.c", "body": "x" * 80 + "...", "api_token": "***"}
        await handle.execute_update(
            AgentWorkflow.decide, Decision(request_id=pending.request_id, choice="approve")
        )
        assert (await outcome(handle)).status == "DONE"


async def test_failed_step_escalates_when_the_agent_says_ask(
    ts_client: Client, ledger_db: Path
) -> None:
    spec = AgentSpec(name="asker", on_failure="ask", grants=LEDGER)
    label = uuid.uuid4().hex[:8]
    steps = [pay("kim", 3), StepSpec(title="boom", tool="fails_quickly", args={"label": label})]
    async with keel_worker(ts_client, CATALOG, spec) as queue:
        handle = await start(ts_client, queue, steps, spec)
        pending = (await waiting(handle)).pending
        assert pending is not None
        assert pending.kind == "escalation"
        assert pending.choices == ["retry", "skip", "abort", "edit"]
        assert pending.reason.startswith("step 2 'boom' (fails_quickly) failed after 3 attempt")
        await handle.execute_update(
            AgentWorkflow.decide, Decision(request_id=pending.request_id, choice="retry")
        )
        again = await waiting(handle)
        assert again.pending is not None and again.pending.request_id != pending.request_id
        assert again.steps[1].attempts == 6  # two rounds of three bounded attempts
        await handle.execute_update(
            AgentWorkflow.decide,
            Decision(request_id=again.pending.request_id, choice="abort", reason="give up"),
        )
        final = await outcome(handle)
    assert final.status == "NOT_DONE"
    assert final.reason.endswith("aborted: give up")
    assert store.balances() == {"kim": 0}


async def test_validator_flags_an_implausible_result(ts_client: Client, ledger_db: Path) -> None:
    step = StepSpec(title="price", tool="quote", args={"sku": "a", "price": -5})
    async with keel_worker(ts_client, CATALOG, agent()) as queue:
        final = await outcome(await start(ts_client, queue, [step], PLAN_RUNNER))
    assert final.status == "NOT_DONE"
    assert "ImplausibleResult: implausible result: negative price" in final.reason
    assert final.steps[0].attempts == 3
