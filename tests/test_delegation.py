"""Delegation (issue 16): an agent's model hands a goal to another agent, which runs as a child
workflow with narrowed powers and a carved budget; approvals reach it through its delegator,
and a cancel of the delegator undoes the child's writes. Scripted models, real dev server."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from temporalio.client import Client

import examples.ledger as ledger
import keel
from examples.ledger import store
from keel.activities import scripted_model
from keel.shared.context_view import results_seen
from keel.workflows.contracts import (
    ApprovalPolicy,
    Budget,
    Grant,
    ModelReply,
    ModelRequest,
    ToolCallRequest,
    Usage,
)
from tests.conftest import dev_address, keel_worker, report_when, wait_until

PAY = re.compile(r"pay (\w+) (\d+)")


def goal_of(request: ModelRequest) -> str:
    return next(m.content for m in request.messages if m.role == "user")


def call(name: str, turn: int, **args: object) -> ModelReply:
    request = ToolCallRequest(id=f"call-{turn}", name=name, arguments=json.dumps(args))
    return ModelReply(tool_calls=(request,), usage=Usage(input_tokens=10, output_tokens=2))


@scripted_model("boss-model")
def boss_model(request: ModelRequest) -> ModelReply:
    """Delegates its goal's task to the helper, then finishes (or asks a human, if told)."""
    goal, turn = goal_of(request), results_seen(request.messages)
    task = goal.split("delegate: ", 1)[1].split(";")[0]
    if turn == 0:
        return call("delegate", turn, agent="helper", goal=task)
    if "then ask" in goal and turn == 1:
        return call("ask_human", turn, question="anything else?")
    if "then pay" in goal and turn == 1:
        return call("post_entry", turn, account="alice", amount=1)
    return call("finish", turn, summary="delegated")


@scripted_model("helper-model")
def helper_model(request: ModelRequest) -> ModelReply:
    """Pays what its goal says, once; with "forever" it never stops paying."""
    goal, turn = goal_of(request), results_seen(request.messages)
    account, amount = PAY.search(goal).groups()  # type: ignore[union-attr]
    if turn == 0 or "forever" in goal:
        return call("post_entry", turn, account=account, amount=int(amount) + turn)
    return call("finish", turn, summary=f"paid {account}")


def agent(name: str, model: str, **extra: object) -> keel.AgentSpec:
    settings: dict[str, object] = {
        "name": name,
        "tools": ("post_entry",),
        "routes": keel.Routes(
            act=keel.Route(models=(keel.ModelRef(provider="scripted", model=model),))
        ),
        "unverified_ok": True,
    } | extra
    return keel.AgentSpec(**settings)


def boss(**extra: object) -> keel.AgentSpec:
    grants = (Grant(scope="ledger:write:alice"), Grant(scope="ledger:write:carl"))
    return agent("boss", "boss-model", delegates=("helper",), grants=grants, **extra)


def helper(**extra: object) -> keel.AgentSpec:
    return agent("helper", "helper-model", grants=(Grant(scope="ledger:*"),), **extra)


def catalog(*agents: keel.AgentSpec) -> keel.Catalog:
    return keel.Catalog.of([*keel.Catalog.from_modules([ledger]).tools.values(), boss_model,
                            helper_model, *agents])  # fmt: skip


async def test_a_child_never_exceeds_its_delegators_powers(
    dev_client: Client, ledger_db: Path
) -> None:
    client = await keel.connect(address=dev_address(dev_client))
    async with keel_worker(client, catalog(boss(), helper())) as queue:
        run = await keel.start(client, agent="boss", goal="delegate: pay bob 5", task_queue=queue)
        final = await run.result()
        step = final.steps[0]
        assert step.child is not None
        child = await keel.get(client, step.child).result()
    assert final.status == "DONE", final.reason
    denied = child.steps[0]
    assert denied.error is not None and "delegated by 'boss'" in denied.error, denied
    assert "ledger:write:bob" in denied.error
    assert store.balances() == {}  # the helper may pay bob; its delegator may not, so it did not
    assert step.result["run_id"] == step.child and step.result["status"] == child.status


async def test_budgets_roll_up_and_stop_a_runaway_child(
    dev_client: Client, ledger_db: Path
) -> None:
    client = await keel.connect(address=dev_address(dev_client))
    limited = boss(budget=Budget(max_tool_calls=4, max_repeats=100))
    async with keel_worker(client, catalog(limited, helper())) as queue:
        run = await keel.start(
            client, agent="boss", goal="delegate: pay alice 1 forever; then pay", task_queue=queue
        )
        final = await run.result()
        child = await keel.get(client, final.steps[0].child or "").result()
    assert child.status == "NOT_DONE" and "max_tool_calls" in child.reason, child.steps
    assert child.budget.max_tool_calls == 4  # carved: what the boss had left
    assert child.used.tool_calls == 4
    assert final.used.tool_calls == 4  # the child's calls count against the boss ...
    assert final.status == "NOT_DONE", final.reason  # ... whose own next call is refused
    assert final.reason == "budget exhausted: max_tool_calls 4 reached (4 used)"
    assert store.balances() == {"alice": 0}  # the child undid its payments when it stopped


async def test_an_approval_inside_a_child_is_answered_through_its_delegator(
    dev_client: Client, ledger_db: Path
) -> None:
    client = await keel.connect(address=dev_address(dev_client))
    gated = helper(approvals={"post_entry": ApprovalPolicy()})
    async with keel_worker(client, catalog(boss(), gated)) as queue:
        run = await keel.start(client, agent="boss", goal="delegate: pay alice 7", task_queue=queue)
        report = await report_when(run, lambda r: bool(r.steps) and r.steps[0].child is not None)
        child_id = report.steps[0].child or ""
        child = keel.get(client, child_id)

        async def child_waits() -> bool:
            # The report names the child as its delegator starts it: on a busy machine the
            # server may not have created it yet.
            try:
                return (await child.report()).status == "WAITING_ON_YOU"
            except keel.RunNotFound:
                return False

        await wait_until(child_waits)
        for _ in range(100):  # pending lists from visibility, which lags a little
            listed = dict(await keel.pending(client))
            if child_id in listed:
                break
            await asyncio.sleep(0.05)
        assert listed[child_id].chain == [run.id]
        answer = await run.approve(reason="fine", approver="ops")  # sent to the boss's id
        assert answer.startswith("accepted: approve")
        final = await run.result()
    assert final.status == "DONE", final.reason
    assert store.balances() == {"alice": 7}


async def test_cancelling_the_delegator_undoes_the_childs_writes(
    dev_client: Client, ledger_db: Path
) -> None:
    client = await keel.connect(address=dev_address(dev_client))
    async with keel_worker(client, catalog(boss(), helper())) as queue:
        run = await keel.start(
            client, agent="boss", goal="delegate: pay carl 4; then ask", task_queue=queue
        )
        await report_when(run, lambda r: r.status == "WAITING_ON_YOU")  # the child is DONE
        assert store.balances() == {"carl": 4}
        await run.cancel()
        final = await run.result()
    assert final.status == "NOT_DONE"
    assert [c.compensation for c in final.compensations] == ["reverse_entry"]
    assert store.balances() == {"carl": 0}  # the child's payment, undone by its delegator
