"""worker.py as an operator runs it: graceful stop on SIGTERM, one-line errors."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from temporalio.client import Client

from tests.conftest import dev_address
from tests.processes import WorkerProcess, run


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
    assert ready.startswith("keel worker ready: task queue 'keel', tools: always_fails, big_")
    assert ready.rstrip().endswith("write_with_bad_undo, write_with_slow_undo")
    worker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.proc.wait(), 30) == 0
    assert "keel worker stopping" in log.read_text()


async def test_unknown_tools_module_is_one_line(dev_client: Client) -> None:
    env = {"TEMPORAL_ADDRESS": dev_address(dev_client)}
    result = await run(sys.executable, "worker.py", "--tools", "no.such.module", env=env)
    assert result.code == 1
    assert result.err.strip() == (
        "worker.py: error: no such tools module: no.such.module (No module named 'no')"
    )


async def test_unreachable_server_is_one_line() -> None:
    result = await run(sys.executable, "worker.py", env={"TEMPORAL_ADDRESS": "127.0.0.1:1"})
    assert result.code == 1
    assert result.err.startswith("worker.py: error: cannot reach Temporal at 127.0.0.1:1")
    assert "Traceback" not in result.err
