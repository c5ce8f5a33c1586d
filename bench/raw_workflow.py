"""The baseline: plain temporalio, nothing of Keel's. Its own workflow calling its own activity
N times in a row (for bench/supervisors.py, a parent restarting failed child workflows; for
bench/parallel.py, a workflow running N activities at once), on
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
from temporalio.common import RetryPolicy, SearchAttributeKey
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


@activity.defn(name="raw_nap")
async def raw_nap(seconds: float) -> float:
    """A read that takes `seconds` (bench/parallel.py)."""
    await asyncio.sleep(seconds)
    return seconds


@workflow.defn(name="RawFanOut")
class RawFanOut:
    """`n` activities at once (asyncio.gather), as a hand-written workflow would run the
    reads of one model answer; no model call."""

    @workflow.run
    async def run(self, n: int, seconds: float) -> int:
        naps = [
            workflow.execute_activity(
                raw_nap,
                seconds,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
            for _ in range(n)
        ]
        return len(await asyncio.gather(*naps))


# The keyword the approvals bench counts waiting runs by (Keel's runs set the same one).
WAITING = SearchAttributeKey.for_keyword("KeelStatus")


@workflow.defn(name="RawApproval")
class RawApproval:
    """A one-step payment waiting on a person (bench/approvals.py): it says it waits, an update
    answers it, a 7-day timeout bounds the wait, then the activity runs."""

    def __init__(self) -> None:
        self.choice: str | None = None

    @workflow.update
    def decide(self, choice: str) -> str:
        self.choice = choice
        return choice

    @workflow.run
    async def run(self, account: str) -> str:
        workflow.upsert_search_attributes([WAITING.value_set("WAITING_ON_YOU")])
        await workflow.wait_condition(lambda: self.choice is not None, timeout=timedelta(days=7))
        await workflow.execute_activity(
            raw_noop,
            1,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        return account


async def plain_worker(
    address: str, queue: str, max_cached_workflows: int = 1000
) -> tuple[Client, Worker]:
    """A client with temporalio's default converter and a worker serving the baseline only."""
    client = await Client.connect(address)
    worker = Worker(
        client,
        task_queue=queue,
        workflows=[RawToolLoop, RawSupervisor, RawChild, RawFanOut, RawApproval],
        activities=[raw_noop, raw_child_work, raw_nap],
        activity_executor=ThreadPoolExecutor(max_workers=100),
        max_cached_workflows=max_cached_workflows,
    )
    return client, worker


async def serve(address: str, queue: str, max_cached_workflows: int = 1000) -> None:
    """Run the baseline's worker until killed (bench/jobs.py and bench/approvals.py measure it
    as a process)."""
    _, worker = await plain_worker(address, queue, max_cached_workflows)
    async with worker:
        print("raw worker ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":  # python bench/raw_workflow.py ADDRESS QUEUE [CACHED_WORKFLOWS]
    import sys

    asyncio.run(serve(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:4])))
