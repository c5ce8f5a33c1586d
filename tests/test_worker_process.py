"""worker.py as an operator runs it: graceful stop on SIGTERM, one-line errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.service import RPCError

from keel.workflows import AgentWorkflow
from keel.workflows.contracts import PLAN_RUNNER, AgentRunInput, PlanSpec, StepSpec
from keel.workflows.metrics import COUNTERS
from tests.conftest import dev_address
from tests.processes import WorkerProcess, run, starter


async def test_sigterm_stops_the_worker_gracefully(dev_client: Client, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    worker = WorkerProcess(
        {"TEMPORAL_ADDRESS": dev_address(dev_client)},
        log,
        "--tools",
        "examples.ledger",
        "tests/sample_tools.py",
    )
    await worker.start()
    assert worker.proc is not None
    ready = log.read_text()
    # Both modules' tools are registered; a long list is shortened in the middle.
    assert "keel worker ready: task queue 'keel', tools: always_fails, big_" in ready
    assert ready.rstrip().endswith("write_with_bad_undo, write_with_slow_undo")
    worker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.proc.wait(), 30) == 0
    assert "keel worker stopping" in log.read_text()


async def test_sigterm_stops_a_worker_whose_sync_tool_hangs_within_its_grace(
    dev_client: Client, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    queue = f"hung-{uuid.uuid4().hex[:8]}"
    env = {"TEMPORAL_ADDRESS": dev_address(dev_client), "KEEL_TASK_QUEUE": queue}
    worker = WorkerProcess(env, log, "--tools", "tests/sample_tools.py", "--shutdown-grace", "1")
    await worker.start()
    assert worker.proc is not None
    plan = PlanSpec(
        goal="hang",
        steps=[StepSpec(title="hang", tool="hangs_in_a_thread", args={"seconds": 600})],
    )
    run_id = f"hung-{uuid.uuid4().hex[:8]}"
    await dev_client.start_workflow(
        AgentWorkflow.run,
        AgentRunInput(agent=PLAN_RUNNER, goal=plan.goal, plan=plan),
        id=run_id,
        task_queue=queue,
    )
    for _ in range(400):
        if "hanging now" in log.read_text():
            break
        await asyncio.sleep(0.05)
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.proc.wait(), 30) == 0
    assert time.monotonic() - started < 1 + 5 + 3  # grace + cancel grace + slack, not 600 s
    text = log.read_text()
    assert "leaving 1 tool calls running in threads" in text, text
    assert f"tool 'hangs_in_a_thread' (run {run_id}, step 1, attempt 1)" in text
    with contextlib.suppress(RPCError):  # the call's 2 s timeout may have ended the run
        await dev_client.get_workflow_handle(run_id).terminate("test over")


async def test_workers_with_different_catalogs_never_share_a_queue(
    dev_client: Client, tmp_path: Path
) -> None:
    queue = f"catalog-{uuid.uuid4().hex[:8]}"
    env = {"TEMPORAL_ADDRESS": dev_address(dev_client), "KEEL_TASK_QUEUE": queue}
    first = WorkerProcess(env, tmp_path / "first.log", "--tools", "examples.ledger")
    same = WorkerProcess(env, tmp_path / "same.log", "--tools", "examples.ledger")
    await first.start()
    try:
        other = await run(
            sys.executable,
            "worker.py",
            "--tools",
            "examples.ledger",
            "tests/sample_tools.py",
            env=env,
        )
        assert other.code == 1, other
        lines = other.err.strip().splitlines()
        assert len(lines) == 1, other.err
        assert lines[0].startswith(
            f"worker.py: error: task queue '{queue}' is served by a worker with another catalog"
        )
        await same.start()  # the same catalog may scale out
    finally:
        await first.stop()
        await same.stop()
    # Both have exited on this host: a worker with the new catalog may take the queue over.
    changed = WorkerProcess(
        env, tmp_path / "changed.log", "--tools", "examples.ledger", "tests/sample_tools.py"
    )
    await changed.start()
    await changed.stop()


async def test_unknown_tools_module_is_one_line(dev_client: Client) -> None:
    env = {"TEMPORAL_ADDRESS": dev_address(dev_client)}
    result = await run(sys.executable, "worker.py", "--tools", "no.such.module", env=env)
    assert result.code == 1
    assert result.err.strip() == (
        "worker.py: error: no such tools module: no.such.module (No module named 'no')"
    )


BAD_DECLARATIONS = {
    "compensation": (
        "from activities import tool\n"
        "@tool(effect='write', compensation='no_such_undo')\n"
        "def pay(account: str) -> str:\n    return account\n",
        "declarations refused: tool 'pay': compensation 'no_such_undo' is not registered",
    ),
    "agent": (
        "from activities import tool\nfrom workflows.contracts import AgentSpec\n"
        "@tool\ndef look(account: str) -> str:\n    return account\n"
        "SCOUT = AgentSpec(name='scout', tools=('look', 'ghost'))\n",
        "declarations refused: agent 'scout': unknown tool 'ghost'",
    ),
    "retry": (
        "from activities import tool\n@tool(retry={'max_attempts': 0})\n"
        "def look(account: str) -> str:\n    return account\n",
        "declares something invalid: max_attempts: Input should be greater than or equal to 1",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_DECLARATIONS))
async def test_a_bad_declaration_stops_the_worker_in_one_line(case: str, tmp_path: Path) -> None:
    source, expected = BAD_DECLARATIONS[case]
    module = tmp_path / f"bad_{case}.py"
    module.write_text(source)
    # No server at this address: the worker must refuse before it ever connects.
    env = {"TEMPORAL_ADDRESS": "127.0.0.1:1"}
    result = await run(sys.executable, "worker.py", "--tools", str(module), env=env)
    assert result.code == 1, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("worker.py: error: "), result.err
    assert expected in lines[0], result.err


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("KEEL_STICKY_TIMEOUT", "soon", "KEEL_STICKY_TIMEOUT must be a number, not 'soon'"),
        ("KEEL_SHUTDOWN_GRACE", "-1", "KEEL_SHUTDOWN_GRACE must be at least 0, not '-1'"),
        ("KEEL_MAX_CACHED_WORKFLOWS", "lots", "KEEL_MAX_CACHED_WORKFLOWS must be a whole number"),
        ("KEEL_INLINE_LIMIT", "4k", "KEEL_INLINE_LIMIT must be a whole number"),
        ("KEEL_LOG_LEVEL", "loud", "KEEL_LOG_LEVEL must be one of debug, info, warning, error"),
        ("KEEL_LOG_FORMAT", "xml", "KEEL_LOG_FORMAT must be one of json, text, not 'xml'"),
    ],
)
async def test_a_bad_setting_is_one_line_naming_the_variable(
    variable: str, value: str, expected: str
) -> None:
    env = {"TEMPORAL_ADDRESS": "127.0.0.1:1", variable: value}
    result = await run(sys.executable, "worker.py", env=env)
    assert result.code == 1, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"worker.py: error: {expected}"), result.err


async def test_a_bad_log_level_option_is_one_line() -> None:
    # the starter's options follow its subcommand
    for argv in (
        ["worker.py", "--log-level", "loud"],
        ["starter.py", "pending", "--log-level", "loud"],
    ):
        result = await run(sys.executable, *argv, env={"TEMPORAL_ADDRESS": "127.0.0.1:1"})
        assert result.code == 2, result
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and "argument --log-level: invalid choice: 'loud'" in lines[0]


async def test_unreachable_server_is_one_line() -> None:
    result = await run(sys.executable, "worker.py", env={"TEMPORAL_ADDRESS": "127.0.0.1:1"})
    assert result.code == 1
    assert result.err.startswith("worker.py: error: cannot reach Temporal at 127.0.0.1:1")
    assert "Traceback" not in result.err


async def test_json_logs_one_object_per_line_with_the_run(
    dev_client: Client, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    env = {
        "TEMPORAL_ADDRESS": dev_address(dev_client),
        "KEEL_TASK_QUEUE": f"json-{tmp_path.name[-12:]}",
        "KEEL_LEDGER_DB": str(tmp_path / "ledger.sqlite"),
        "KEEL_STORE_DIR": str(tmp_path / "blobs"),
    }
    worker = WorkerProcess(env, log, "--log-format", "json", "--log-level", "info")
    await worker.start()
    try:
        run_id = f"json-{tmp_path.name[-12:]}"
        done = await starter(
            "run",
            "ledger-clerk",
            "--goal",
            "Pay jo 3",
            "--id",
            run_id,
            "--wait",
            "--log-format",
            "json",
            env=env,
        )
        assert done.code == 0, done
        assert all(json.loads(line) for line in done.err.splitlines())  # the starter's, too
    finally:
        await worker.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # each one parses
    assert lines[0]["message"] == f"blob store: {tmp_path / 'blobs'}"
    assert lines[1]["message"].startswith("keel worker ready: task queue")
    about_run = [line for line in lines if line.get("run_id") == run_id]
    events = {(line.get("event"), line.get("step")) for line in about_run}
    assert {("step_started", 1), ("step_done", 1), ("acceptance", None), ("final", None)} <= events
    final = next(line for line in about_run if line.get("event") == "final")
    assert final["outcome"] == "DONE" and final["level"] == "info"
    workflow_lines = [line for line in lines if line["logger"] == "temporalio.workflow"]
    assert workflow_lines and all(line.get("run_id") == run_id for line in workflow_lines)


async def test_prometheus_metrics_count_tool_calls_and_runs(
    dev_client: Client, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "TEMPORAL_ADDRESS": dev_address(dev_client),
        "KEEL_TASK_QUEUE": f"metrics-{tmp_path.name[-12:]}",
        "KEEL_LEDGER_DB": str(tmp_path / "ledger.sqlite"),
        "KEEL_STORE_DIR": str(tmp_path / "blobs"),
    }
    worker = WorkerProcess(env, tmp_path / "worker.log", "--metrics-address", f"127.0.0.1:{port}")
    await worker.start()
    try:
        at_start = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")
        goal = "Pay kim 3 and lou 4"
        done = await starter("run", "ledger-clerk", "--goal", goal, "--wait", env=env)
        assert done.code == 0, done
        text = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")
    finally:
        await worker.stop()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("keel_")
    }
    # Every counter family is there, at zero, before the first run; named the Prometheus way.
    families = {
        line.split()[2] for line in at_start.splitlines() if line.startswith("# TYPE keel_")
    }
    assert families == {f"keel_{n}_total" for n in COUNTERS}, families
    calls = {k: v for k, v in samples.items() if k.startswith("keel_tool_calls_total{agent")}
    assert sum(calls.values()) == 2, samples
    assert all('agent="ledger-clerk"' in k and 'outcome="ok"' in k for k in calls)
    finished = [v for k, v in samples.items() if k.startswith("keel_runs_finished_total{agent")]
    assert finished == [1.0], samples
    assert any('status="DONE"' in k for k in samples if k.startswith("keel_runs_finished"))
    # Durations as histograms in seconds: two tool calls, one planner model call.
    timed = [v for k, v in samples.items() if k.startswith("keel_tool_call_duration_seconds_count")]
    assert sum(timed) == 2, samples
    assert any(k.startswith("keel_model_call_duration_seconds_count") for k in samples)
    assert any('le="0.25"' in k for k in samples if "duration_seconds_bucket" in k)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()
