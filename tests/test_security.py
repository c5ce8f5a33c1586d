"""Least privilege: grants checked in the workflow and again in the activity, argument rules,
denials fed back and counted, approvers outside the list refused, and the audit trail."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment

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
    Budget,
    Decision,
    Grant,
    PlanSpec,
    Route,
    Routes,
    SecretRef,
    StepSpec,
    ToolCall,
)
from tests import sample_tools
from tests.conftest import SPANS, keel_worker
from tests.model_server import OPENAI, ModelServer, openai_call
from tests.test_approvals import start, waiting
from tests.test_models import KEY, KEY_ENV, RUN_IDS, Collect, openai_ref, tool_messages

CATALOG = Catalog.from_modules([ledger, sample_tools])
READER = (Grant(scope="ledger:read:*"), Grant(scope="notes:read:*"))


def reader(server: ModelServer, **extra: object) -> AgentSpec:
    settings: dict[str, object] = {
        "name": "reader",
        "tools": ("get_balance", "post_entry", "fetch_note"),
        "routes": Routes(act=Route(models=(openai_ref(server),))),
        "grants": READER,
        "unverified_ok": True,
    } | extra
    return AgentSpec(**settings)


async def run(client: Client, agent: AgentSpec, goal: str, plan: PlanSpec | None = None):
    async with keel_worker(client, CATALOG, agent) as queue:
        run_id = f"sec-{uuid.uuid4().hex[:8]}"
        RUN_IDS.append(run_id)
        return await outcome(
            await client.start_workflow(
                AgentWorkflow.run,
                AgentRunInput(agent=agent, goal=goal, plan=plan),
                id=run_id,
                task_queue=queue,
            )
        )


@pytest.fixture(autouse=True)
def model_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
def server():
    with ModelServer() as s:
        yield s


async def test_an_injected_instruction_cannot_use_a_tool_outside_the_grant(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    server.script(
        OPENAI,
        [
            openai_call("fetch_note", topic="payroll"),
            openai_call("post_entry", account="mallory", amount=1000),  # the model obeys it
            openai_call("finish", summary="read the note"),
        ],
    )
    report = await run(ts_client, reader(server), "summarize the payroll note")
    assert store.balances() == {}  # never executed
    assert [(s.tool, s.done, s.skipped) for s in report.steps] == [
        ("fetch_note", True, False),
        ("post_entry", False, True),
    ]
    denial = "post_entry needs 'ledger:write:mallory'; no grant covers it"
    assert report.steps[1].error == f"denied: {denial}"
    assert tool_messages(server.requests(OPENAI)[2].body)[-1] == f"error: denied: {denial}"
    audited = [(a.action, a.target, a.outcome, a.detail) for a in report.audit]
    assert audited == [
        ("tool_call", "fetch_note", "ok", "attempt 1"),
        ("denied", "post_entry", "denied", denial),
    ]
    assert report.audit[1].actor == "agent:reader" and report.used.denials == 1


async def test_repeated_denials_spend_their_budget(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    server.script(
        OPENAI,
        lambda body: openai_call(
            "post_entry", account="mallory", amount=len(tool_messages(body)) + 1
        ),
    )
    report = await run(ts_client, reader(server, budget=Budget(max_denials=2)), "pay mallory")
    assert report.status == "NOT_DONE"
    assert report.reason == "budget exhausted: max_denials 2 reached (2 used)"
    assert store.balances() == {}


async def test_a_grant_narrows_the_arguments(ts_client: Client, ledger_db: Path) -> None:
    small = Grant(scope="ledger:write:*", rules=(ArgRule(arg="amount", op="<=", value=100),))
    agent = AgentSpec(name="small-payer", grants=(small,))
    plan = PlanSpec(
        goal="pay",
        steps=[
            StepSpec(title="small", tool="post_entry", args={"account": "nia", "amount": 80}),
            StepSpec(title="large", tool="post_entry", args={"account": "nia", "amount": 500}),
        ],
    )
    report = await run(ts_client, agent, "pay", plan)
    assert report.status == "NOT_DONE"
    assert report.reason == (
        "step 2 'large' denied: post_entry needs 'ledger:write:nia'; its grant allows only "
        "calls where amount <= 100"
    )
    assert store.balances() == {"nia": 0}  # the allowed write was compensated
    assert [a.action for a in report.audit] == ["tool_call", "denied", "compensation"]


async def test_the_activity_checks_the_grant_again(ledger_db: Path) -> None:
    call = ToolCall(
        run_id="r",
        step=1,
        args={"account": "oz", "amount": 5},
        idempotency_key="r:1",
        grants=list(READER),
    )
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(ledger.post_entry.activity, call)
    assert caught.value.type == "Denied" and caught.value.non_retryable
    assert caught.value.message == "denied: post_entry needs 'ledger:write:oz'; no grant covers it"
    assert store.balances() == {}


async def test_an_approver_outside_the_list_is_refused_and_audited(
    ts_client: Client, ledger_db: Path
) -> None:
    gate = ApprovalPolicy(approvers=("ops@example.com",))
    spec = AgentSpec(
        name="guarded", approvals={"post_entry": gate}, grants=(Grant(scope="ledger:*"),)
    )
    async with keel_worker(ts_client, CATALOG, spec) as queue:
        handle = await start(
            ts_client,
            queue,
            [StepSpec(title="pay", tool="post_entry", args={"account": "pia", "amount": 1})],
            spec,
        )
        RUN_IDS.append(handle.id)
        pending = (await waiting(handle)).pending
        assert pending is not None
        with pytest.raises(WorkflowUpdateFailedError) as caught:
            await handle.execute_update(
                AgentWorkflow.decide,
                Decision(request_id=pending.request_id, choice="approve", approver="mallory"),
            )
        assert "approver 'mallory' may not decide" in str(caught.value.cause)
        ok = Decision(request_id=pending.request_id, choice="approve", approver="ops@example.com")
        await handle.execute_update(AgentWorkflow.decide, ok)
        report = await outcome(handle)
        with pytest.raises((WorkflowUpdateFailedError, RPCError)):  # a replay changes nothing
            await handle.execute_update(AgentWorkflow.decide, ok)
    assert report.status == "DONE"
    assert [(a.action, a.actor, a.outcome) for a in report.audit] == [
        ("decision_refused", "mallory", "refused"),
        ("decision", "ops@example.com", "approve"),
        ("tool_call", "agent:guarded", "ok"),
    ]


async def test_a_secret_by_reference_never_reaches_history_logs_or_spans(
    ts_client: Client, ledger_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"payroll-{uuid.uuid4().hex}"
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text(json.dumps({"PAYROLL_TOKEN": secret}))
    monkeypatch.setenv("KEEL_SECRETS_FILE", str(secrets_file))
    logs = Collect()
    logging.getLogger().addHandler(logs)
    ref = {"secret": "PAYROLL_TOKEN"}
    plan = PlanSpec(
        goal="pay",
        steps=[
            StepSpec(title="auth", tool="call_payroll", args={"token": ref}),
            StepSpec(title="fail", tool="call_payroll", args={"token": ref, "fail": True}),
        ],
    )
    try:
        report = await run(ts_client, PLAN_RUNNER, "payroll", plan)
    finally:
        logging.getLogger().removeHandler(logs)
    assert report.steps[0].result == {
        "authorized_with": "[redacted]",
        "note": "used [redacted] for the call",
    }
    assert report.reason.endswith("PermissionError: payroll refused token [redacted]")
    history = await ts_client.get_workflow_handle(report.run_id).fetch_history()
    raw = b"".join(event.SerializeToString() for event in history.events)
    assert secret.encode() not in raw and b"PAYROLL_TOKEN" in raw  # the name travels, not the value
    assert logs.lines and not [line for line in logs.lines if secret in line]
    spans = SPANS.get_finished_spans()  # every span of the session so far
    assert [s for s in spans if (s.attributes or {}).get("keel.run_id") == report.run_id]
    for span in spans:
        assert secret not in json.dumps(dict(span.attributes or {}), default=str)


def test_a_secret_ref_carries_a_name_only() -> None:
    with pytest.raises(ValueError):
        SecretRef(secret="sk-live 123")  # a value pasted where a name belongs
