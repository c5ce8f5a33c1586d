"""A worker that runs only the ledger's activities, in its own process, so a test can SIGKILL
the process running a write while the run's workflow stays cached on a worker that lives.

    python -m tests.activity_worker ADDRESS TASK_QUEUE
"""

from __future__ import annotations

import asyncio
import sys

from temporalio.client import Client
from temporalio.worker import Worker

import examples.ledger as ledger
from keel.activities import Catalog
from keel.plugin import keel_converter


async def serve(address: str, queue: str) -> None:
    client = await Client.connect(address, data_converter=keel_converter(None, None))
    activities = Catalog.from_modules([ledger]).activities()
    worker = Worker(client, task_queue=queue, activities=activities)
    async with worker:
        print("activity worker ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
