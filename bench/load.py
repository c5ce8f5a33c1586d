"""Load: many concurrent runs of a 5-step plan on one worker, against the same workload as
plain temporalio workflows calling the same activity.

    python bench/load.py [--runs 1000] [--rounds 2] [--quick] [--server-default]

Each side runs in its own process (a worker with Keel's plugin and the raw workflow, and the
client that starts the runs), so its peak RSS, read from /proc, is its own. The sides take
turns, the order reversed every round (raw, keel, keel, raw, ...), so a slower machine or a
server holding more finished runs does not favour either. Printed per side and round: wall
time until every run completed, steps per second, runs lost (not completed, or not DONE); then
the Keel/raw ratio of the summed walls and of the highest peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

from raw_workflow import RawToolLoop, plain_worker  # bench/ is on sys.path as a script
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from keel import KeelPlugin
from keel.activities import Catalog, tool
from keel.devserver import add_server_default_flag, start_dev_server
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import (
    PLAN_RUNNER,
    RUN_PROTOCOL,
    AgentRunInput,
    PlanSpec,
    RunReport,
    StepSpec,
)

STEPS = 5


@tool(local=False)  # an activity, as the raw side's: a quick read would be a local one
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
        unverified_ok=True,
    )
    prefix = f"load-keel-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    handles = await gather_bounded(
        [
            client.start_workflow(
                AgentWorkflow.run,
                AgentRunInput(agent=PLAN_RUNNER, goal="load", plan=plan, protocol=RUN_PROTOCOL),
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
            client.start_workflow(RawToolLoop.run, STEPS, id=f"{prefix}-{i}", task_queue=queue)
            for i in range(runs)
        ]
    )
    results = await gather_bounded([h.result() for h in handles if not isinstance(h, Exception)])
    wall = time.perf_counter() - started
    return wall, runs - sum(r == STEPS for r in results)


async def measure_side(address: str, side: str, runs: int) -> dict[str, float]:
    """One side in this process: its own worker, so its peak RSS is its own. The raw side is
    plain temporalio (bench/raw_workflow.py), nothing of Keel's."""
    queue = f"load-{side}-{uuid.uuid4().hex[:6]}"
    if side == "raw":
        client, worker = await plain_worker(address, queue)
    else:
        client = await Client.connect(address, data_converter=pydantic_data_converter)
        worker = Worker(client, task_queue=queue, plugins=[KeelPlugin(Catalog.of([noop]))])
    async with worker:
        idle, _ = memory_mb()
        wall, lost = await (raw_side if side == "raw" else keel_side)(client, queue, runs)
        rss, peak = memory_mb()
    return {"wall": wall, "lost": lost, "idle": idle, "rss": rss, "peak": peak}


async def main(runs: int, rounds: int, tuned: bool) -> int:
    env = await start_dev_server(tuned=tuned)
    address = env.client.service_client.config.target_host
    rows: list[tuple[str, dict[str, float]]] = []
    order = [side for r in range(rounds) for side in (("raw", "keel"), ("keel", "raw"))[r % 2]]
    try:
        for side in order:
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--side",
                side,
                "--address",
                address,
                "--runs",
                str(runs),
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await child.communicate()
            if child.returncode != 0:
                print(f"load: the {side} side failed (exit {child.returncode})", file=sys.stderr)
                return 1
            rows.append((side, json.loads(out.decode().strip().splitlines()[-1])))
    finally:
        await env.shutdown()
    print(
        f"{'side':>5} {'runs':>5} {'wall s':>8} {'steps/s':>8} {'lost':>5} {'idle MB':>8} "
        f"{'end MB':>7} {'peak MB':>8}"
    )
    for side, row in rows:
        print(
            f"{side:>5} {runs:>5} {row['wall']:>8.1f} {runs * STEPS / row['wall']:>8.1f} "
            f"{row['lost']:>5} {row['idle']:>8.0f} {row['rss']:>7.0f} {row['peak']:>8.0f}"
        )

    def total(side: str, key: str) -> float:
        values = [row[key] for s, row in rows if s == side]
        return max(values) if key == "peak" else sum(values)

    config = "tuned" if tuned else "default (--server-default)"
    print(
        f"keel/raw wall: {total('keel', 'wall') / total('raw', 'wall'):.2f}, peak RSS: "
        f"{total('keel', 'peak') / total('raw', 'peak'):.2f}; {STEPS} steps a run, {rounds} "
        f"round(s); {config} dev server; each side is its own process (worker + client), RSS "
        "from /proc/self/status"
    )
    return 0 if all(row["lost"] == 0 for _, row in rows) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2, help="turns each side takes")
    parser.add_argument("--quick", action="store_true", help="100 runs, 1 round (for CI)")
    parser.add_argument("--side", choices=["raw", "keel"], help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    add_server_default_flag(parser)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.rounds = 100, 1
    if args.side:
        print(json.dumps(asyncio.run(measure_side(args.address, args.side, args.runs))))
        code = 0
    else:
        code = asyncio.run(main(args.runs, args.rounds, not args.server_default))
    from keel.process import exit_now

    exit_now(code)
