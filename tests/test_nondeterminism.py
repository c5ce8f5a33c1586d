"""A determinism violation fails the run with its cause, instead of leaving it silently stuck."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from keel import KeelPlugin
from keel.activities import Catalog
from keel.runs import get_report
from tests.conftest import NOT_REPLAYED_PREFIXES
from tests.probe_workflows import ProbeV1, ProbeV2, probe_step


async def test_nondeterminism_fails_the_run_with_its_cause(
    dev_client: Client, capfd: pytest.CaptureFixture[str]
) -> None:
    queue = f"nd-{uuid.uuid4().hex[:8]}"
    run_id = f"{NOT_REPLAYED_PREFIXES[0]}{uuid.uuid4().hex[:8]}"
    plugin = KeelPlugin(Catalog.of())
    async with Worker(
        dev_client,
        task_queue=queue,
        workflows=[ProbeV1],
        activities=[probe_step],
        plugins=[plugin],
        max_cached_workflows=0,  # every task replays from history, as after a restart
    ):
        handle = await dev_client.start_workflow(ProbeV1.run, id=run_id, task_queue=queue)
        for _ in range(200):
            history = await handle.fetch_history()
            if any(e.HasField("activity_task_completed_event_attributes") for e in history.events):
                break
            await asyncio.sleep(0.05)
    async with Worker(
        dev_client,
        task_queue=queue,
        workflows=[ProbeV2],
        activities=[probe_step],
        plugins=[KeelPlugin(Catalog.of())],
    ):
        await handle.signal(ProbeV1.resume)
        for _ in range(200):
            report = await get_report(dev_client, run_id)
            if report.status != "RUNNING":
                break
            await asyncio.sleep(0.05)
    assert report.status == "NOT_DONE"
    assert report.reason.startswith("run failed:")
    assert "Nondeterminism error" in report.reason, report.reason
    # The worker's log names the cause too (temporalio's core logs it at WARN).
    logged = capfd.readouterr()
    assert "Failing workflow due to nondeterminism error" in logged.out + logged.err
