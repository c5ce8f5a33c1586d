"""The baseline: plain temporalio, nothing of Keel's. Its own workflow calling its own activity
N times in a row, on a client and worker with temporalio's default data converter.

    client, worker = await plain_worker(address, queue)   # run RawToolLoop.run(n) on it

Kept in its own module because the workflow sandbox re-imports the module of a workflow. The
activity is a plain function run in a thread, as Keel runs a plain-function tool.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import Worker


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


async def plain_worker(address: str, queue: str) -> tuple[Client, Worker]:
    """A client with temporalio's default converter and a worker serving the baseline only."""
    client = await Client.connect(address)
    worker = Worker(
        client,
        task_queue=queue,
        workflows=[RawToolLoop],
        activities=[raw_noop],
        activity_executor=ThreadPoolExecutor(max_workers=100),
    )
    return client, worker
