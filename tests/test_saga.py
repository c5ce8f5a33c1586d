"""Sagas: completed writes are compensated in reverse order, and a failed undo is never dropped."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHandle

import examples.ledger as ledger
from examples.ledger import store
from keel.activities import Catalog
from keel.runs import outcome
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import (
    PLAN_RUNNER,
    AgentRunInput,
    Decision,
    PlanSpec,
    RunReport,
    StepSpec,
)
from tests import sample_tools
from tests.conftest import keel_worker

CATALOG = Catalog.from_modules([ledger, sample_tools])
N = 5


def executions(db: Path, tool: str) -> list[int]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key FROM executions WHERE tool = ? ORDER BY id", (tool,))
        return [int(key.rsplit(":", 2)[-2]) for (key,) in rows]


async def start(client: Client, queue: str, steps: list[StepSpec]) -> WorkflowHandle:
    plan = PlanSpec(goal="saga", steps=steps)
    return await client.start_workflow(
        AgentWorkflow.run,
        AgentRunInput(agent=PLAN_RUNNER, goal=plan.goal, plan=plan),
        id=f"saga-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
    )


async def wait_for_pending(handle: WorkflowHandle) -> RunReport:
    for _ in range(400):
        report = await handle.query(AgentWorkflow.report)
        if report.pending is not None:
            return report
        await asyncio.sleep(0.025)
    raise AssertionError("the run never waited on a human")


@pytest.mark.parametrize("k", range(1, N + 1))
async def test_failure_at_step_k_leaves_the_ledger_as_it_was(
    ts_client: Client, ledger_db: Path, k: int
) -> None:
    store.post("before", "earlier-run", "acct1", 100, "", 1)  # the world before the run
    before = store.balances()
    steps = [
        StepSpec(title=f"pay {i}", tool="post_entry", args={"account": f"acct{i}", "amount": i})
        for i in range(1, N + 1)
    ]
    steps[k - 1] = StepSpec(title="boom", tool="always_fails", args={"label": f"k{k}"})
    async with keel_worker(ts_client, CATALOG) as queue:
        report = await outcome(await start(ts_client, queue, steps))
    assert report.status == "NOT_DONE"
    assert report.reason.startswith(f"step {k} 'boom' (always_fails) failed after 3 attempt(s)")
    assert {a: b for a, b in store.balances().items() if b} == before
    undone = list(range(k - 1, 0, -1))
    assert executions(ledger_db, "reverse_entry") == undone  # newest first
    assert [(c.step, c.status) for c in report.compensations] == [(s, "done") for s in undone]
    assert report.saga == []  # every entry settled


async def test_failed_compensation_escalates_and_is_reported(
    ts_client: Client, ledger_db: Path
) -> None:
    label = uuid.uuid4().hex[:8]
    steps = [
        StepSpec(title="write", tool="write_with_bad_undo", args={"label": label}),
        StepSpec(title="boom", tool="fails_quickly", args={"label": label}),
    ]
    async with keel_worker(ts_client, CATALOG) as queue:
        handle = await start(ts_client, queue, steps)
        waiting = await wait_for_pending(handle)
        pending = waiting.pending
        assert pending is not None
        assert waiting.status == "WAITING_ON_YOU"
        assert pending.kind == "escalation" and pending.choices == ["retry", "skip"]
        assert pending.reason.startswith("compensation failed: undo_fails for step 1 after 3")
        assert sample_tools.CALLS[f"undo_fails:{label}"] == 3
        await handle.execute_update(
            AgentWorkflow.decide, Decision(request_id=pending.request_id, choice="skip")
        )
        report = await outcome(handle)
    assert report.status == "NOT_DONE"
    assert (
        "compensation failed: step 1 undo_fails (RuntimeError: the undo service is down; "
        "skipped)" in report.reason
    )
    assert [(c.step, c.status, c.attempts) for c in report.compensations] == [(1, "skipped", 3)]


async def test_a_human_retry_of_a_compensation_can_succeed(
    ts_client: Client, ledger_db: Path
) -> None:
    label = uuid.uuid4().hex[:8]
    steps = [
        StepSpec(title="write", tool="write_with_slow_undo", args={"label": label}),
        StepSpec(title="boom", tool="fails_quickly", args={"label": label}),
    ]
    async with keel_worker(ts_client, CATALOG) as queue:
        handle = await start(ts_client, queue, steps)
        pending = (await wait_for_pending(handle)).pending
        assert pending is not None
        await handle.execute_update(
            AgentWorkflow.decide, Decision(request_id=pending.request_id, choice="retry")
        )
        report = await outcome(handle)
    assert report.status == "NOT_DONE" and "compensation failed" not in report.reason
    assert [(c.status, c.attempts) for c in report.compensations] == [("done", 1)]
    assert sample_tools.CALLS[f"undo_after_human_retry:{label}"] == 4
