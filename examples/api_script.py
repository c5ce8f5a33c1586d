"""Start a run from your own script, watch it, approve it, read the outcome.

    ./temporal-dev up && python worker.py &       # a worker serving examples.ledger
    python examples/api_script.py "Pay alice 30 and zed 500"

The script names the agent; it needs no tool code (the worker resolves the agent).
"""

from __future__ import annotations

import asyncio
import sys

import keel
from keel.process import exit_now


async def main(goal: str) -> int:
    client = await keel.connect()
    run = await keel.start(client, agent="ledger-clerk", goal=goal)
    print(f"started {run.id}")
    while (report := await run.report()).status == "RUNNING":
        await asyncio.sleep(0.2)
    if report.status == "WAITING_ON_YOU" and report.pending is not None:
        print(f"waiting on you: {report.pending.reason}; approving")
        print(await run.approve(reason="approved by the example script", approver="script"))
    final = await run.result()
    print(f"{final.status}: {final.reason}")
    return 0 if final.status == "DONE" else 3


if __name__ == "__main__":
    # exit_now: the SDK's threads can abort a finalizing interpreter (temporalio/sdk-python#300)
    exit_now(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "Pay alice 30")))
