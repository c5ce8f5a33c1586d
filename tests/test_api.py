"""The Python API a script uses (keel.connect, keel.start, Run, keel.pending, keel.get) against
the dev server, with the worker in this process and no tool code on the client's side."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

import examples.ledger as ledger
import keel
from examples.ledger import store
from tests.conftest import dev_address


async def test_a_script_starts_watches_approves_and_gets_the_outcome(
    dev_client: Client, ledger_db: Path
) -> None:
    queue = f"api-{uuid.uuid4().hex[:8]}"
    client = await keel.connect(address=dev_address(dev_client))  # Keel's converter by default
    worker_plugin = keel.KeelPlugin(keel.Catalog.from_modules([ledger]))
    async with Worker(client, task_queue=queue, plugins=[worker_plugin]):
        run = await keel.start(
            client,
            agent="ledger-clerk",  # a name: the worker resolves the agent from its catalog
            goal="Pay alice 30 and zed 500",
            id=f"api-{queue}",
            task_queue=queue,
        )
        for _ in range(400):
            report = await run.report()
            if report.status == "WAITING_ON_YOU":
                break
            await asyncio.sleep(0.025)
        assert report.pending is not None and report.pending.tool == "post_entry"
        assert run.id in [run_id for run_id, _ in await keel.pending(client)]
        with pytest.raises(keel.RunExists):
            await keel.start(client, agent="ledger-clerk", goal="again", id=run.id)
        answer = await keel.get(client, run.id).approve(reason="fine", approver="ann")
        assert answer.startswith("accepted: approve")
        final = await run.result()
    assert (final.status, final.verified) == ("DONE", True)
    assert [(d.choice, d.approver) for d in final.decisions] == [("approve", "ann")]
    assert store.balances() == {"alice": 30, "zed": 500}


async def test_a_run_that_ends_not_done_is_a_status_not_an_error(
    dev_client: Client, ledger_db: Path
) -> None:
    queue = f"api-{uuid.uuid4().hex[:8]}"
    client = await keel.connect(address=dev_address(dev_client))
    worker_plugin = keel.KeelPlugin(keel.Catalog.from_modules([ledger]))
    plan = keel.PlanSpec(
        goal="pay bo 5",
        steps=[keel.StepSpec(title="pay", tool="post_entry", args={"account": "bo", "amount": 5})],
    )  # nothing verifies it, and it does not opt out
    async with Worker(client, task_queue=queue, plugins=[worker_plugin]):
        run = await keel.start(client, plan=plan, task_queue=queue)
        final = await run.result()
    assert final.status == "NOT_DONE" and "nothing verified the result" in final.reason
    with pytest.raises(keel.KeelError, match="name an agent or give a plan"):
        await keel.start(client)
