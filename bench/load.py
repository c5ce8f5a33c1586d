"""Load: many concurrent runs of a 5-step plan on one worker, against the same workload as
plain temporalio workflows calling the same activity.

    python bench/load.py [--runs 1000] [--quick]

One process holds the worker (Keel's plugin and the raw workflow side by side) and starts the
runs; its peak RSS is read from /proc. Printed per side: wall time until every run completed,
steps per second, runs lost (not completed, or not DONE), and the Keel/raw ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
import uuid
from pathlib import Path

from raw_workflow import RawToolLoop  # bench/ is on sys.path when run as a script
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import Catalog, tool
from keel import KeelPlugin
from workflows import AgentWorkflow
from workflows.contracts import PLAN_RUNNER, AgentRunInput, PlanSpec, RunReport, StepSpec

STEPS = 5


@tool
def noop(i: int) -> int:
    """Returns its argument: the cheapest possible tool."""
    return i


def memory_mb() -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def gather_bounded(jobs: list, limit: int = 200) -> list:
    gate = asyncio.Semaphore(limit)

    async def one(job):  # type: ignore[no-untyped-def]
        async with gate:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs), return_exceptions=True)


async def keel_side(client: Client, queue: str, runs: int) -> tuple[float, int]:
    plan = PlanSpec(
        goal="load",
        steps=[StepSpec(title=f"noop {i}", tool="noop", args={"i": i}) for i in range(STEPS)],
    )
    prefix = f"load-keel-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    handles = await gather_bounded(
        [
            client.start_workflow(
                AgentWorkflow.run,
                AgentRunInput(agent=PLAN_RUNNER, goal="load", plan=plan),
                id=f"{prefix}-{i}",
                task_queue=queue,
            )
            for i in range(runs)
        ]
    )
    results = await gather_bounded([h.result() for h in handles if not isinstance(h, Exception)])
    wall = time.perf_counter() - started
    ok = sum(isinstance(r, RunReport) and r.status == "DONE" for r in results)
    return wall, runs - ok


async def raw_side(client: Client, queue: str, runs: int) -> tuple[float, int]:
    prefix = f"load-raw-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    handles = await gather_bounded(
        [
            client.start_workflow(
                RawToolLoop.run, args=["noop", STEPS], id=f"{prefix}-{i}", task_queue=queue
            )
            for i in range(runs)
        ]
    )
    results = await gather_bounded([h.result() for h in handles if not isinstance(h, Exception)])
    wall = time.perf_counter() - started
    return wall, runs - sum(r == STEPS for r in results)


async def main(runs: int) -> int:
    binary = Path(sys.executable).parent / "temporal"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binary) if binary.exists() else shutil.which("temporal"),
        data_converter=pydantic_data_converter,
    )
    queue = f"load-{uuid.uuid4().hex[:6]}"
    rows = []
    try:
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[RawToolLoop],
            plugins=[KeelPlugin(Catalog.of([noop]))],
        ):
            idle, _ = memory_mb()
            for side, fn in (("raw", raw_side), ("keel", keel_side)):
                wall, lost = await fn(env.client, queue, runs)
                rss, peak = memory_mb()
                rows.append((side, wall, lost, rss, peak))
    finally:
        await env.shutdown()
    print(
        f"{'side':>5} {'runs':>5} {'wall s':>8} {'steps/s':>8} {'lost':>5} {'RSS MB':>7} "
        f"{'peak MB':>8}"
    )
    for side, wall, lost, rss, peak in rows:
        print(
            f"{side:>5} {runs:>5} {wall:>8.1f} {runs * STEPS / wall:>8.1f} {lost:>5} "
            f"{rss:>7.0f} {peak:>8.0f}"
        )
    ratio = rows[1][1] / rows[0][1]
    print(
        f"keel/raw wall: {ratio:.2f}; {STEPS} steps a run; idle process RSS {idle:.0f} MB; "
        "one process holds the worker and the client"
    )
    return 0 if all(lost == 0 for _, _, lost, _, _ in rows) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100 runs (for CI)")
    args = parser.parse_args()
    if args.quick:
        args.runs = 100
    code = asyncio.run(main(args.runs))
    from keel.cli import exit_now

    exit_now(code)
