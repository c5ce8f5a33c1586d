"""MCP servers as tools (issue 19), against real MCP servers written with the `mcp` SDK
(tests/mcp_server.py): over stdio (the worker starts the server and reuses it) and streamable
HTTP; an undeclared tool is a write that waits for approval; a server that dies mid-call is
started again by the call's retry; the tool list is recorded, so every history replays (the
session's end replays them) without asking a server."""

from __future__ import annotations

import asyncio
import socket
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client

import keel
from keel.activities.catalog import Catalog
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import (
    AgentRunInput,
    Grant,
    McpServer,
    McpToolPolicy,
    RetrySpec,
    RunReport,
)
from tests.conftest import history_holds, keel_worker, report_when
from tests.model_server import ModelServer, Reply, openai_call
from tests.test_models import KEY, KEY_ENV, clerk, openai_ref

SERVER = Path(__file__).with_name("mcp_server.py")
COMPLETIONS = "/openai/v1/chat/completions"
READS = {
    name: McpToolPolicy(effect="read") for name in ("lookup", "crash_once", "whoami", "token_seen")
}
QUICK = RetrySpec(max_attempts=3, initial_interval=0.2)


@pytest.fixture(autouse=True)
def model_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("KEEL_TEST_MCP_TOKEN", "tok-2718")


def stdio(tmp_path: Path, name: str = "desk") -> McpServer:
    return McpServer(
        name=name,
        command=(sys.executable, str(SERVER), "stdio"),
        env={
            "KEEL_TEST_MCP_OUTBOX": str(tmp_path / "outbox"),
            "KEEL_TEST_MCP_TOKEN": "${KEEL_TEST_MCP_TOKEN}",  # resolved on the worker
        },
        tools=READS,
        retry=QUICK,
    )


async def start(client: Client, queue: str, agent: str) -> str:
    run_id = f"mcp-{uuid.uuid4().hex[:8]}"
    await client.start_workflow(
        AgentWorkflow.run,
        AgentRunInput(agent=clerk(name=agent), goal="use the desk"),
        id=run_id,
        task_queue=queue,
    )
    return run_id


async def finished(client: Client, run_id: str) -> RunReport:
    return await keel.get(client, run_id).result()


def calls(*replies: Reply) -> list[Reply]:
    return list(replies)


async def test_stdio_tools_run_as_activities_and_an_undeclared_write_waits_for_approval(
    dev_client: Client, tmp_path: Path
) -> None:
    with ModelServer() as server:
        server.script(
            COMPLETIONS,
            calls(
                openai_call("desk__lookup", key="a"),
                openai_call("desk__send_email", to="ann", body="hello"),
                openai_call("desk__token_seen"),
                openai_call("finish", summary="mailed"),
            ),
        )
        agent = clerk(
            openai_ref(server),
            name="desk-clerk",
            tools=(),
            mcp=(stdio(tmp_path),),
            grants=(Grant(scope="mcp:desk:*"),),
        )
        async with keel_worker(dev_client, Catalog.of(), agent) as queue:
            run = keel.get(dev_client, await start(dev_client, queue, "desk-clerk"))
            waiting = await report_when(run, lambda r: r.status == "WAITING_ON_YOU")
            assert not (tmp_path / "outbox" / "ann.txt").exists()  # not before approval
            await run.approve(reason="fine", approver="ops")
            report = await run.result()
            history = await dev_client.get_workflow_handle(run.id).fetch_history()
        offered = {t["function"]["name"] for t in server.requests(COMPLETIONS)[0].body["tools"]}
    assert {"desk__lookup", "desk__send_email", "desk__crash_once", "desk__whoami"} <= offered
    assert waiting.pending is not None and waiting.pending.tool == "desk__send_email"
    assert report.status == "DONE", report.reason
    assert [s.result for s in report.steps] == ["value of a", "sent to ann", True]
    assert history_holds(history, "${KEEL_TEST_MCP_TOKEN}")  # the reference travels
    assert not history_holds(history, "tok-2718")  # the server got the value; the history not
    assert (tmp_path / "outbox" / "ann.txt").read_text() == "hello"
    audited = [(a.action, a.target, a.outcome) for a in report.audit]
    assert ("tool_call", "desk__send_email", "ok") in audited
    assert ("decision", waiting.pending.request_id, "approve") in audited


async def test_a_server_that_dies_mid_call_is_started_again_by_the_retry(
    dev_client: Client, tmp_path: Path
) -> None:
    marker = tmp_path / "crashed"
    with ModelServer() as server:
        server.script(
            COMPLETIONS,
            calls(
                openai_call("desk2__crash_once", marker=str(marker)),
                openai_call("desk2__whoami"),
                openai_call("finish", summary="survived"),
            ),
        )
        agent = clerk(
            openai_ref(server),
            name="crash-clerk",
            tools=(),
            mcp=(stdio(tmp_path, "desk2"),),
            grants=(Grant(scope="mcp:desk2:*"),),
        )
        async with keel_worker(dev_client, Catalog.of(), agent) as queue:
            report = await finished(dev_client, await start(dev_client, queue, "crash-clerk"))
    assert report.status == "DONE", report.reason
    crashed, after = report.steps
    assert crashed.attempts == 2  # the attempt the server died in, and the retry
    first_pid = int(marker.read_text())
    assert crashed.result != first_pid and after.result == crashed.result  # reused after


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_streamable_http_server_serves_tools_and_an_unreachable_one_refuses_the_run(
    dev_client: Client, tmp_path: Path
) -> None:
    port = free_port()
    http = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SERVER),
        "http",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        web = McpServer(name="web", url=f"http://127.0.0.1:{port}/mcp", tools=READS, retry=QUICK)
        gone = McpServer(name="gone", url=f"http://127.0.0.1:{free_port()}/mcp", retry=QUICK)
        with ModelServer() as server:
            server.script(
                COMPLETIONS,
                calls(openai_call("web__lookup", key="b"), openai_call("finish", summary="ok")),
            )
            agent = clerk(
                openai_ref(server),
                name="web-clerk",
                tools=(),
                mcp=(web,),
                grants=(Grant(scope="mcp:web:*"),),
            )
            lost = clerk(openai_ref(server), name="lost-clerk", tools=(), mcp=(gone,))
            async with keel_worker(dev_client, Catalog.of(), agent, lost) as queue:
                ok = await finished(dev_client, await start(dev_client, queue, "web-clerk"))
                refused = await finished(dev_client, await start(dev_client, queue, "lost-clerk"))
    finally:
        http.terminate()
        await http.wait()
    assert ok.status == "DONE", ok.reason
    assert ok.steps[0].result == "value of b"
    assert (
        refused.refused
        and "MCP server gone" in refused.reason
        and "cannot be reached" in (refused.reason)
    )
