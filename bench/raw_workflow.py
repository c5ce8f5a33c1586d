"""The baseline: plain temporalio, nothing of Keel's. Its own workflow calling its own activity
N times in a row (and, for bench/supervisors.py, a parent restarting failed child workflows), on
a client and worker with temporalio's default data converter.

    client, worker = await plain_worker(address, queue)   # run RawToolLoop.run(n) on it

Kept in its own module because the workflow sandbox re-imports the module of a workflow. The
activity is a plain function run in a thread, as Keel runs a plain-function tool.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, ChildWorkflowError
from temporalio.worker import Worker

FAILS_LEFT: dict[str, int] = {}  # child key -> runs of it still to fail (set by the bench)


@activity.defn(name="raw_noop")
def raw_noop(i: int) -> int:
    """Returns its argument."""
    return i


@workflow.defn(name="RawToolLoop")
class RawToolLoop:
    @workflow.run
    async def run(self, n: int) -> int:
        for step in range(1, n + 1):
            await workflow.execute_activity(
                raw_noop,
                step,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        return n


@activity.defn(name="raw_child_work")
def raw_child_work(key: str) -> str:
    """Fails its child's run (non-retryable) while the bench says so."""
    if FAILS_LEFT.get(key, 0) > 0:
        FAILS_LEFT[key] -= 1
        raise ApplicationError(f"{key} fails", non_retryable=True)
    return key


@workflow.defn(name="RawChild")
class RawChild:
    @workflow.run
    async def run(self, key: str) -> str:
        return str(
            await workflow.execute_activity(
                raw_child_work, key, start_to_close_timeout=timedelta(seconds=30)
            )
        )


@workflow.defn(name="RawSupervisor")
class RawSupervisor:
    """Starts a child workflow per key and starts a failed one again until it succeeds (the
    one_for_one part of a supervisor, nothing more); returns the restarts."""

    @workflow.run
    async def run(self, keys: list[str]) -> int:
        restarts = 0

        async def keep(key: str) -> None:
            nonlocal restarts
            for generation in range(1, 100):
                child_id = f"{workflow.info().workflow_id}.{key}.{generation}"
                try:
                    await workflow.execute_child_workflow(RawChild.run, key, id=child_id)
                    return
                except ChildWorkflowError:
                    restarts += 1

        await asyncio.gather(*(keep(k) for k in keys))
        return restarts


async def plain_worker(address: str, queue: str) -> tuple[Client, Worker]:
    """A client with temporalio's default converter and a worker serving the baseline only."""
    client = await Client.connect(address)
    worker = Worker(
        client,
        task_queue=queue,
        workflows=[RawToolLoop, RawSupervisor, RawChild],
        activities=[raw_noop, raw_child_work],
        activity_executor=ThreadPoolExecutor(max_workers=100),
    )
    return client, worker
