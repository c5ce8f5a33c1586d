"""Live events (issue 15, part 3): followed by `starter.py watch`, by Run.events() and by the
Server-Sent-Events bridge, across a worker SIGKILL and continue-as-new, with no event lost or
seen twice; a retried tool attempt shows in the stream."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from temporalio.client import Client

import examples.ledger as ledger
import keel
from keel.workflows.contracts import EVENTS_CARRIED_BYTES, EVENTS_KEPT_BYTES, RunEvent
from keel.workflows.events import EventLog
from tests import sample_tools
from tests.conftest import dev_address, keel_worker
from tests.processes import WorkerProcess, spawn, worker_env

AGENTS = """
from keel import AgentSpec, Grant

LONG = AgentSpec(
    name="long-planner",
    tools=("post_entry",),
    grants=(Grant(scope="**"),),
    unverified_ok=True,
    max_history_events=30,  # continues as new every few steps
)
"""


def pay_steps(n: int, pause_s: float) -> list[keel.StepSpec]:
    return [
        keel.StepSpec(
            title=f"pay p{i}",
            tool="post_entry",
            args={"account": f"p{i}", "amount": i, "pause_s": pause_s},
        )
        for i in range(1, n + 1)
    ]


def test_a_continuation_carries_the_newest_events_only() -> None:
    clock = datetime(2026, 1, 1, tzinfo=UTC)
    log = EventLog(lambda: clock)
    for i in range(3000):
        log.add("progress", f"event {i} " + "x" * 200)
    carried = log.newest(EVENTS_CARRIED_BYTES)
    assert log.bytes <= EVENTS_KEPT_BYTES and len(carried) < len(log.kept)
    assert sum(len(e.model_dump_json()) for e in carried) <= EVENTS_CARRIED_BYTES
    assert carried[-1].offset == 2999 and carried == list(log.kept)[-len(carried) :]
    resumed = EventLog(lambda: clock, carried, log.next_offset)
    page = resumed.since(0, "RUNNING")  # a follower far behind learns what it missed
    assert page.first_kept == carried[0].offset and page.events[0] == carried[0]
    assert log.newest(1) == [log.kept[-1]]  # never nothing


async def test_watch_and_events_survive_a_sigkill_and_continue_as_new(
    dev_client: Client, tmp_path: Path
) -> None:
    agents = tmp_path / "long_agents.py"
    agents.write_text(AGENTS)
    queue = f"live-{uuid.uuid4().hex[:8]}"
    env = worker_env(dev_address(dev_client), tmp_path, KEEL_TASK_QUEUE=queue)
    args = ("--task-queue", queue, "--tools", "examples.ledger", str(agents))
    first = WorkerProcess(env, tmp_path / "worker1.log", *args)
    second = WorkerProcess(env, tmp_path / "worker2.log", *args)
    client = await keel.connect(address=dev_address(dev_client))
    await first.start()
    watcher: asyncio.subprocess.Process | None = None
    try:
        plan = keel.PlanSpec(goal="pay twelve", steps=pay_steps(12, 0.4))
        run = await keel.start(client, agent="long-planner", plan=plan, task_queue=queue)
        watcher = await spawn(sys.executable, "starter.py", "watch", run.id, "--json", env=env)
        followed: list[RunEvent] = []

        async def follow() -> None:
            async for event in run.events():
                followed.append(event)

        following = asyncio.create_task(follow())
        # Kill the worker once the run has continued as new and is mid-plan.
        for _ in range(600):
            if (
                any(e.kind == "continue_as_new" for e in followed)
                and sum(e.kind == "step_done" for e in followed) >= 7
            ):
                break
            await asyncio.sleep(0.05)
        await first.kill()
        killed_at = len(followed)
        await asyncio.sleep(1.5)  # the follower keeps asking; nobody answers
        await second.start()
        await asyncio.wait_for(following, 120)
        out, err = await asyncio.wait_for(watcher.communicate(), 60)
        final = await run.result()
    finally:
        if watcher is not None and watcher.returncode is None:
            watcher.kill()
        await first.stop()
        await second.stop()
    assert final.status == "DONE", final.reason
    assert killed_at < len(followed)  # events came after the crash too
    watched = [RunEvent.model_validate_json(line) for line in out.decode().splitlines()]
    assert watcher.returncode == 0, err.decode()  # DONE
    for stream in (followed, watched):
        assert [e.offset for e in stream] == list(range(len(stream)))  # gapless, none twice
        assert stream[-1].kind == "final" and stream[-1].outcome == "DONE"
    assert [(e.offset, e.kind, e.message) for e in watched] == [
        (e.offset, e.kind, e.message) for e in followed
    ]
    kinds = [e.kind for e in followed]
    assert kinds.count("step_done") == 12 and kinds.count("continue_as_new") >= 2, kinds
    assert final.continued == kinds.count("continue_as_new")


async def test_the_sse_bridge_serves_events_and_a_retried_attempt(
    dev_client: Client, ledger_db: Path, tmp_path: Path
) -> None:
    sample_tools.CALLS.clear()
    catalog = keel.Catalog.from_modules([ledger, sample_tools])
    client = await keel.connect(address=dev_address(dev_client))
    port = 18000 + uuid.uuid4().int % 2000
    env = {"TEMPORAL_ADDRESS": dev_address(dev_client), "KEEL_EVENTS_TOKEN": "t0k"}
    bridge = await spawn(sys.executable, "-m", "keel.live", "--port", str(port), env=env)
    try:
        assert bridge.stdout is not None
        said = (await asyncio.wait_for(bridge.stdout.readline(), 30)).decode()
        assert f"http://127.0.0.1:{port}/runs/RUN_ID/events?token=..." in said, said
        async with keel_worker(client, catalog) as queue:
            step = keel.StepSpec(
                title="flaky", tool="flaky_activity", args={"label": "sse", "fail_times": 1}
            )
            plan = keel.PlanSpec(goal="flaky once", steps=[step], unverified_ok=True)
            run = await keel.start(client, plan=plan, task_queue=queue)
            url = f"http://127.0.0.1:{port}/runs/{run.id}/events"
            async with httpx.AsyncClient(timeout=60) as http:
                refused = await http.get(url)
                assert refused.status_code == 401
                messages: list[dict[str, str]] = []
                async with http.stream("GET", url, params={"token": "t0k"}) as response:
                    assert response.headers["content-type"] == "text/event-stream"
                    current: dict[str, str] = {}
                    async for line in response.aiter_lines():
                        if not line:
                            messages.append(current)
                            current = {}
                            continue
                        field, _, value = line.partition(": ")
                        current[field] = value
                last = messages[-1]["id"]
                again = await http.get(
                    url, params={"token": "t0k"}, headers={"last-event-id": last}
                )
                assert again.status_code == 204  # nothing after the final event
    finally:
        bridge.terminate()
        await bridge.wait()
    assert [int(m["id"]) for m in messages] == list(range(len(messages)))
    assert messages[-1]["event"] == "final"
    assert json.loads(messages[-1]["data"])["outcome"] == "DONE"
    attempt = next(json.loads(m["data"]) for m in messages if m["event"] == "tool_attempt")
    assert attempt["tool"] == "flaky_activity" and attempt["data"]["attempt"] == 1
    assert "retrying" in attempt["message"]
