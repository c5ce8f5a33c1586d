"""Where a worker runs activations (keel.activations): Keel's runs on the worker's event loop,
every other workflow in a thread as temporalio runs it, a worker's own executor kept."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.bridge.proto.workflow_activation import WorkflowActivation
from temporalio.client import Client
from temporalio.worker import Replayer, Worker

from keel import KeelPlugin
from keel.activations import KeelActivations
from keel.runs import outcome
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import AgentRunInput
from tests.test_prefetch import CATALOG, agent


def activation(
    run_id: str, *, starts: str | None = None, evicts: bool = False
) -> WorkflowActivation:
    act = WorkflowActivation(run_id=run_id)
    if starts is not None:
        act.jobs.add().initialize_workflow.workflow_type = starts
    if evicts:
        act.jobs.add().remove_from_cache.message = "evicted"
    return act


def where(act: WorkflowActivation) -> tuple[int, asyncio.AbstractEventLoop | None]:
    """The thread an activation ran on, and what it saw as the running loop (temporalio's
    activation sets the run's own loop there and clears it when done, as here)."""
    seen = asyncio._get_running_loop()
    asyncio._set_running_loop(None)
    return threading.get_ident(), seen


async def test_keel_runs_activate_on_the_loop_and_others_in_threads() -> None:
    loop = asyncio.get_running_loop()
    executor = KeelActivations(["AgentWorkflow"])
    here = threading.get_ident()

    def run(
        act: WorkflowActivation,
    ) -> asyncio.Future[tuple[int, asyncio.AbstractEventLoop | None]]:
        return loop.run_in_executor(executor, where, act)

    # A Keel run: on this thread, as a callback of this loop; the loop is running after it.
    assert await run(activation("keel-1", starts="AgentWorkflow")) == (here, loop)
    assert asyncio.get_running_loop() is loop
    assert await run(activation("keel-1")) == (here, loop)
    # Another workflow type, and a run the executor never saw start: in a pool thread.
    other, _ = await run(activation("user-1", starts="UserWorkflow"))
    assert other != here
    unknown, _ = await run(activation("keel-2"))
    assert unknown != here
    # The eviction is the run's last activation on the loop; the run is forgotten after it.
    assert await run(activation("keel-1", evicts=True)) == (here, loop)
    forgotten, _ = await run(activation("keel-1"))
    assert forgotten != here
    executor.shutdown()


async def test_an_activation_that_raises_fails_its_future_and_the_loop_goes_on() -> None:
    loop = asyncio.get_running_loop()
    executor = KeelActivations(["AgentWorkflow"])

    def broken(act: WorkflowActivation) -> None:
        asyncio._set_running_loop(None)
        raise RuntimeError(f"broken {act.run_id}")

    with pytest.raises(RuntimeError, match="broken keel-3"):
        await loop.run_in_executor(executor, broken, activation("keel-3", starts="AgentWorkflow"))
    assert asyncio.get_running_loop() is loop


@workflow.defn(name="ThreadName", sandboxed=False)
class ThreadName:
    @workflow.run
    async def run(self) -> str:
        return threading.current_thread().name


async def test_a_worker_runs_keel_inline_and_its_own_workflows_in_threads(
    ts_client: Client, ledger_db: Path
) -> None:
    spec = agent()
    queue = f"activations-{uuid.uuid4().hex[:8]}"
    plugin = KeelPlugin(CATALOG.including(spec))
    worker = Worker(ts_client, task_queue=queue, workflows=[ThreadName], plugins=[plugin])
    executor = worker.config(active_config=True)["workflow_task_executor"]
    assert isinstance(executor, KeelActivations)
    on_the_loop: list[str] = []  # the runs whose activations the executor ran on the loop
    activate = executor._activate

    def spied(done: Any, fn: Any, act: WorkflowActivation) -> None:
        on_the_loop.append(act.run_id)
        activate(done, fn, act)

    executor._activate = spied  # type: ignore[method-assign]
    async with worker:
        keel_run = await ts_client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=spec, goal='[["local_lookup", {"key": "inline"}]]'),
            id=f"activations-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        report = await outcome(keel_run)
        # "user-": not a Keel run, so the suite's replay of Keel's runs leaves it; replayed here.
        user = await ts_client.start_workflow(
            ThreadName.run, id=f"user-thread-{uuid.uuid4().hex[:8]}", task_queue=queue
        )
        name = await user.result()
    assert report.status == "DONE", report.reason
    assert report.steps[0].result == "value of inline"
    assert name.startswith("temporal_workflow_")
    assert keel_run.result_run_id in on_the_loop and user.result_run_id not in on_the_loop
    await Replayer(workflows=[ThreadName]).replay_workflow(await user.fetch_history())

    # A worker given its own executor keeps it.
    pool = concurrent.futures.ThreadPoolExecutor(2)
    mine = Worker(
        ts_client,
        task_queue=queue,
        workflows=[ThreadName],
        plugins=[plugin],
        workflow_task_executor=pool,
    )
    assert mine.config(active_config=True)["workflow_task_executor"] is pool
    pool.shutdown()
