"""A cancel never loses a write: every write whose activity completed is reported done and
compensated, however the cancel and the completion interleave (issue 13, item 1).

The first test forces the worst interleaving: the write completes while no workflow worker
runs, so the completion and the cancel request reach the run in one activation. The second
kills the process running a write after it landed, then cancels the run: the server gives up on
the call without an answer, and the run must ask again before it compensates. The last cancels
10-step write plans at seeded random times, on one worker or two, and counts effects.
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

import examples.ledger as ledger
from examples.ledger import store
from keel import KeelPlugin
from keel.activities import Catalog
from keel.runs import outcome
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import PLAN_RUNNER, AgentRunInput, PlanSpec, RunReport, StepSpec
from tests.conftest import dev_address
from tests.processes import spawn

CATALOG = Catalog.from_modules([ledger])


def write_plan(amounts: list[int], pauses: dict[int, float]) -> PlanSpec:
    """Pay acct1..acctN; step i sleeps pauses[i] s after its write is committed."""
    steps = [
        StepSpec(
            title=f"pay {i}",
            tool="post_entry",
            args={"account": f"acct{i}", "amount": amount, "pause_s": pauses.get(i, 0.0)},
        )
        for i, amount in enumerate(amounts, 1)
    ]
    return PlanSpec(goal="pay everyone", steps=steps, unverified_ok=True)


async def start(client: Client, queue: str, plan: PlanSpec, prefix: str) -> WorkflowHandle:
    return await client.start_workflow(
        AgentWorkflow.run,
        AgentRunInput(agent=PLAN_RUNNER, goal=plan.goal, plan=plan),
        id=f"{prefix}-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
    )


def assert_world_matches(report: RunReport, run_id: str, accounts: int) -> None:
    """After a cancel: every write that landed is reported done and compensated (or, when the
    cancel came after the last step, the run is DONE and every write stands)."""
    left = [i for i in range(1, accounts + 1) if store.run_total(run_id, f"acct{i}") != 0]
    if report.status == "DONE":
        assert left == list(range(1, accounts + 1))
        assert report.compensations == []
        return
    assert report.status == "NOT_DONE"
    assert left == [], f"writes left in the world: {left}"
    done = sorted(s.index for s in report.steps if s.done)
    compensated = sorted(c.step for c in report.compensations if c.status == "done")
    assert done == compensated
    with store.connect() as conn:
        wrote = {
            int(key.rsplit(":", 1)[-1])
            for (key,) in conn.execute(
                "SELECT key FROM entries WHERE run_id = ? AND amount > 0", (run_id,)
            )
        }
    assert sorted(wrote) == done, "a write landed that the report does not list as done"


async def wait_for_completions(handle: WorkflowHandle, count: int) -> None:
    completed = EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    for _ in range(400):
        history = await handle.fetch_history()
        if sum(e.event_type == completed for e in history.events) >= count:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"fewer than {count} activities completed")


async def test_a_write_completing_with_the_cancel_in_one_activation_is_compensated(
    dev_client: Client, ledger_db: Path
) -> None:
    queue = f"race-{uuid.uuid4().hex[:8]}"

    def workflow_worker() -> Worker:
        # No cache: the next workflow task goes to whichever workflow worker polls next.
        return Worker(
            dev_client,
            task_queue=queue,
            plugins=[KeelPlugin(CATALOG)],
            no_remote_activities=True,
            max_cached_workflows=0,
        )

    async with Worker(dev_client, task_queue=queue, activities=CATALOG.activities()):
        first = workflow_worker()
        running = asyncio.create_task(first.run())
        handle = await start(dev_client, queue, write_plan([1, 2, 3], {2: 2.0}), "race")
        for _ in range(400):  # step 2 has written and now sleeps for 2 s before returning
            if store.run_total(handle.id, "acct2"):
                break
            await asyncio.sleep(0.01)
        await first.shutdown()
        await running
        await handle.cancel()
        # Step 2 completes while no workflow worker runs: its completion and the cancel
        # request reach the run in one workflow task.
        await wait_for_completions(handle, 2)
        async with workflow_worker():
            report = await outcome(handle)
    assert [c.step for c in report.compensations] == [2, 1]
    assert_world_matches(report, handle.id, 3)


async def test_a_write_whose_worker_died_during_the_cancel_is_asked_again_and_undone(
    dev_client: Client, ledger_db: Path
) -> None:
    queue = f"unknown-{uuid.uuid4().hex[:8]}"
    address = dev_address(dev_client)
    # The write runs in a process of its own; the run stays cached on this one's workflow
    # worker, so the cancel reaches it at once (not after a dead worker's sticky timeout).
    activities = await spawn(sys.executable, "-m", "tests.activity_worker", address, queue, env={})
    assert activities.stdout is not None
    ready = await asyncio.wait_for(activities.stdout.readline(), 60)
    assert ready.decode().strip() == "activity worker ready"
    plugin = KeelPlugin(CATALOG)
    async with Worker(dev_client, task_queue=queue, plugins=[plugin], no_remote_activities=True):
        handle = await start(dev_client, queue, write_plan([5], {1: 5.0}), "unknown")
        for _ in range(1000):  # the write is committed; the tool now pauses 5 s
            if store.run_total(handle.id, "acct1"):
                break
            await asyncio.sleep(0.01)
        activities.kill()  # no completion will ever come from it
        await activities.wait()
        await handle.cancel()
        # The call times out at its 2 s heartbeat timeout with the cancel pending, and the
        # server does not retry it: its outcome is unknown. The run asks again (same key)
        # on a worker that runs activities, then undoes the write.
        async with Worker(dev_client, task_queue=queue, activities=CATALOG.activities()):
            report = await outcome(handle)
    history = await handle.fetch_history()
    timed_out = EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert sum(e.event_type == timed_out for e in history.events) == 1
    assert scheduled == ["post_entry", "post_entry", "reverse_entry"]
    assert [(c.step, c.status) for c in report.compensations] == [(1, "done")]
    assert_world_matches(report, handle.id, 1)


@pytest.mark.parametrize("seed", range(16))
async def test_random_cancels_never_leave_a_write_unreported(
    dev_client: Client, ledger_db: Path, seed: int
) -> None:
    chance = random.Random(seed)
    queue = f"cancels-{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        # Odd seeds: two workers (one client each), so the completion and the cancel may
        # reach different ones.
        clients = [dev_client]
        if seed % 2:
            clients.append(
                await Client.connect(
                    dev_address(dev_client), data_converter=dev_client.data_converter
                )
            )
        for client in clients:
            worker = Worker(client, task_queue=queue, plugins=[KeelPlugin(CATALOG)])
            await stack.enter_async_context(worker)
        plan = write_plan(list(range(1, 11)), {i: 0.02 for i in range(1, 11)})
        handle = await start(dev_client, queue, plan, "cancels")
        await asyncio.sleep(chance.uniform(0.0, 0.4))  # the run takes ~0.4 s
        await handle.cancel()
        report = await outcome(handle)
    assert_world_matches(report, handle.id, 10)
