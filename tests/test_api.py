"""The Python API a script uses (keel.connect, keel.start, Run, keel.pending, keel.get) against
the dev server, with the worker in this process and no tool code on the client's side."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

import examples.ledger as ledger
import keel
from examples.ledger import store
from tests.conftest import dev_address, keel_worker
from tests.processes import ROOT, run


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
    # Protocol 1 (AgentRunInput.protocol): listed RUNNING from its start, no patch marker, and
    # each status written only where it changed: pending set then cleared, three statuses.
    history = await client.get_workflow_handle(run.id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.search_attributes.indexed_fields["KeelStatus"].data == b'"RUNNING"'
    markers = [e.marker_recorded_event_attributes.marker_name for e in history.events]
    assert "core_patch" not in markers
    statuses = [
        e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
    ]
    assert [s["KeelStatus"].data for s in statuses] == [
        b'"WAITING_ON_YOU"',
        b'"RUNNING"',
        b'"DONE"',
    ]
    memos = [
        e
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED
    ]
    assert len(memos) == 2


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


async def test_a_script_outside_the_project_runs_with_no_tool_code_importable(
    dev_client: Client, ledger_db: Path, tmp_path: Path
) -> None:
    """Issue 15, part 2: the example script, copied out of the project and run isolated (-I:
    no script directory, no PYTHONPATH on sys.path), cannot import the tools, yet starts the
    worker's agent by name, approves and ends DONE; the starter does the same with a plan."""
    script = tmp_path / "my_script.py"
    script.write_text((ROOT / "examples" / "api_script.py").read_text())
    no_tools = await run(sys.executable, "-I", "-c", "import examples.ledger", env={}, cwd=tmp_path)
    assert "No module named 'examples'" in no_tools.err
    async with keel_worker(dev_client, keel.Catalog.from_modules([ledger])) as queue:
        env = {"TEMPORAL_ADDRESS": dev_address(dev_client), "KEEL_TASK_QUEUE": queue}
        done = await run(sys.executable, "-I", str(script), "Pay ida 40", env=env, cwd=tmp_path)
        assert done.code == 0, done
        assert "DONE" in done.out
        plan = tmp_path / "plan.json"
        plan.write_text(
            keel.PlanSpec(
                goal="pay jo 6",
                steps=[
                    keel.StepSpec(
                        title="pay", tool="post_entry", args={"account": "jo", "amount": 6}
                    )
                ],
                unverified_ok=True,
            ).model_dump_json()
        )
        started = await run(
            sys.executable, "-I", str(ROOT / "starter.py"), "run", "--plan", "plan.json", "--wait",
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert started.code == 0, started
        refused = tmp_path / "refused.json"
        refused.write_text('{"goal": "g", "steps": [{"title": "t", "tool": "ghost"}]}')
        said = await run(
            sys.executable, "-I", str(ROOT / "starter.py"), "run", "--plan", "refused.json",
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert (said.code, said.err.strip()) == (
            1,
            "starter.py: error: plan refused: step 1: unknown tool 'ghost'",
        )
    assert store.balances() == {"ida": 40, "jo": 6}


async def test_start_hears_the_workers_refusal(dev_client: Client, ledger_db: Path) -> None:
    client = await keel.connect(address=dev_address(dev_client))
    async with keel_worker(dev_client, keel.Catalog.from_modules([ledger])) as queue:
        with pytest.raises(keel.RunRefused, match="unknown agent 'nobody'"):
            await keel.start(client, agent="nobody", goal="x", task_queue=queue)
        plan = keel.PlanSpec(goal="g", steps=[keel.StepSpec(title="t", tool="ghost")])
        with pytest.raises(keel.RunRefused, match="plan refused: step 1: unknown tool 'ghost'"):
            await keel.start(client, plan=plan, id=f"refused-{queue}", task_queue=queue)
        report = await keel.get(client, f"refused-{queue}").report()
        assert (report.status, report.refused) == ("NOT_DONE", True)


async def test_with_no_worker_start_says_so_and_the_worker_checks_later(
    dev_client: Client, ledger_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = await keel.connect(address=dev_address(dev_client))
    queue = f"later-{uuid.uuid4().hex[:8]}"
    plan = keel.PlanSpec(goal="g", steps=[keel.StepSpec(title="t", tool="ghost")])
    run_ = await keel.start(client, plan=plan, task_queue=queue)  # nobody polls: not checked
    assert f"no worker polls task queue '{queue}'" in caplog.text
    worker_plugin = keel.KeelPlugin(keel.Catalog.from_modules([ledger]))
    async with Worker(client, task_queue=queue, plugins=[worker_plugin]):
        final = await run_.result()
    assert (final.status, final.refused) == ("NOT_DONE", True)
    assert final.reason == "plan refused: step 1: unknown tool 'ghost'"
