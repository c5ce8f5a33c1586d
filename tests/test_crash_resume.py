"""A worker SIGKILLed mid-plan: the next worker finishes the run, and no effect happens twice."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections import Counter
from pathlib import Path

from temporalio.client import Client

from keel.runs import outcome
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import AcceptanceSpec, PlanSpec, StepSpec
from tests.conftest import dev_address, start_plan, wait_until
from tests.processes import WorkerProcess, worker_env

N, K = 6, 3  # kill while step K+1 has written its effect but not yet reported completion


def ledger_rows(db: Path, sql: str) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:  # the worker has not created the tables yet
            return []


async def test_sigkill_mid_plan_resumes_at_the_first_unchecked_step(
    dev_client: Client, tmp_path: Path
) -> None:
    db = tmp_path / "ledger.sqlite"
    env = worker_env(dev_address(dev_client), tmp_path)
    queue = f"crash-{uuid.uuid4().hex[:8]}"
    args = ("--task-queue", queue, "--tools", "examples.ledger")
    first = WorkerProcess(env, tmp_path / "worker1.log", *args)
    second = WorkerProcess(env, tmp_path / "worker2.log", *args)
    steps = [
        StepSpec(
            title=f"Pay acct{i} {i * 10}",
            tool="post_entry",
            args={"account": f"acct{i}", "amount": i * 10, "pause_s": 1.0},
        )
        for i in range(1, N + 1)
    ]
    acceptance = [
        AcceptanceSpec(
            criterion=f"acct{i} got {i * 10}",
            check="run_posted",
            args={"account": f"acct{i}", "expected": i * 10},
        )
        for i in range(1, N + 1)
    ]
    spec = PlanSpec(goal="crash test", steps=steps, acceptance=acceptance)
    await first.start()
    try:
        handle = await start_plan(dev_client, queue, spec, "crash")

        async def step_k1_written() -> bool:
            return ledger_rows(db, "SELECT COUNT(*) FROM entries") == [(K + 1,)]

        await wait_until(step_k1_written)
        # Step K+1 sleeps 1 s after its write: the state read here is the state at the kill.
        at_kill = await handle.query(AgentWorkflow.report)
        await first.kill()
        assert [s.done for s in at_kill.steps] == [True] * K + [False] * (N - K)

        started = time.monotonic()
        await second.start()

        async def next_step_done() -> bool:
            report = await handle.query(AgentWorkflow.report)
            return sum(s.done for s in report.steps) > K

        await wait_until(next_step_done, every=0.05)
        resume_seconds = time.monotonic() - started
        report = await asyncio.wait_for(outcome(handle), 120)
    finally:
        await first.stop()
        await second.stop()

    print(f"resume after SIGKILL: {resume_seconds:.2f} s from new worker start to next step")
    assert report.status == "DONE", report.reason
    assert report.verified
    entries = ledger_rows(db, "SELECT account, amount FROM entries ORDER BY account")
    assert entries == [(f"acct{i}", i * 10) for i in range(1, N + 1)]  # each effect once
    runs = Counter(
        int(key.rsplit(":", 1)[1]) for (key,) in ledger_rows(db, "SELECT key FROM executions")
    )
    assert all(runs[step] == 1 for step in range(1, K + 1)), runs  # finished steps never rerun
    assert runs[K + 1] == 2, runs  # interrupted after its effect: delivered again, applied once
    assert all(runs[step] == 1 for step in range(K + 2, N + 1)), runs
    assert report.steps[K].attempts == 2


async def test_a_write_in_flight_when_a_cancel_meets_a_dead_worker_is_still_undone(
    dev_client: Client, tmp_path: Path
) -> None:
    """The run is cancelled while a write runs on a worker that then dies: the write landed but
    its call never reports. The cancel waits for the call; the server delivers the timed-out
    call again to the next worker (same key: a no-op that reports what it did), so the write
    is known and undone, never left behind by the compensation."""
    db = tmp_path / "ledger.sqlite"
    env = worker_env(dev_address(dev_client), tmp_path)
    queue = f"inflight-{uuid.uuid4().hex[:8]}"
    args = ("--task-queue", queue, "--tools", "examples.ledger")
    first = WorkerProcess(env, tmp_path / "worker1.log", *args)
    second = WorkerProcess(env, tmp_path / "worker2.log", *args)
    step = StepSpec(
        title="pay", tool="post_entry", args={"account": "z", "amount": 4, "pause_s": 4.0}
    )
    spec = PlanSpec(goal="in flight", steps=[step], unverified_ok=True)
    await first.start()
    try:
        handle = await start_plan(dev_client, queue, spec, "inflight")

        async def written() -> bool:
            return ledger_rows(db, "SELECT COUNT(*) FROM entries") == [(1,)]

        await wait_until(written)  # committed; the call sleeps 4 s before it reports
        await handle.cancel()
        await first.kill()
        await second.start()
        report = await asyncio.wait_for(outcome(handle), 120)
    finally:
        await first.stop()
        await second.stop()
    assert report.status == "NOT_DONE" and "cancelled" in report.reason, report.reason
    assert [c.status for c in report.compensations] == ["done"], report.compensations
    rows = ledger_rows(db, "SELECT account, SUM(amount) FROM entries GROUP BY account")
    assert rows == [("z", 0)]  # written once, undone once
