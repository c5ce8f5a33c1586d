"""Parallel tool calls: ten 200 ms reads in one model answer, run at once or one at a time.

    python bench/parallel.py [--reads 10] [--seconds 0.2] [--runs 3] [--quick] [--server-default]

A dev server in memory, one in-process worker, an offline scripted model that answers the goal
with `--reads` calls of a read tool sleeping `--seconds`, then finishes. The same agent runs
with `max_parallel` = reads (all at once) and 1 (in turn), alternating with the baseline: plain
temporalio on the same server (bench/raw_workflow.py: a workflow running the same activities at
once with asyncio.gather, its own worker and the default converter, no model call). The wall
time of each run (start to end) is the figure, its median over `--runs`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from raw_workflow import RawFanOut, plain_worker  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

import keel  # noqa: E402
from keel.activities.models.scripted import scripted_model  # noqa: E402
from keel.devserver import add_server_default_flag, start_dev_server  # noqa: E402
from keel.process import exit_now  # noqa: E402
from keel.runs import outcome  # noqa: E402
from keel.workflows.contracts import (  # noqa: E402
    RUN_PROTOCOL,
    ActingPolicy,
    AgentRunInput,
    AgentSpec,
    ModelRef,
    ModelReply,
    ModelRequest,
    Route,
    Routes,
    ToolCallRequest,
)

READS = {"count": 10, "seconds": 0.2}


@keel.tool(timeout=30)
async def slow_read(n: int, seconds: float) -> int:
    """A read that takes `seconds` (a search, an API call)."""
    await asyncio.sleep(seconds)
    return n


@scripted_model("bench-fan-out")
def fan_out(request: ModelRequest) -> ModelReply:
    """All the reads in one answer; once their results are in, finish."""
    if any(m.role == "tool" for m in request.messages):
        done = ToolCallRequest(id="finish", name="finish", arguments='{"summary": "read all"}')
        return ModelReply(tool_calls=(done,))
    calls = tuple(
        ToolCallRequest(
            id=f"read-{n}",
            name="slow_read",
            arguments=json.dumps({"n": n, "seconds": READS["seconds"]}),
        )
        for n in range(int(READS["count"]))
    )
    return ModelReply(tool_calls=calls)


def agent(max_parallel: int) -> AgentSpec:
    route = Route(models=(ModelRef(provider="scripted", model="bench-fan-out", local=True),))
    return AgentSpec(
        name=f"fan-out-{max_parallel}",
        tools=("slow_read",),
        routes=Routes(act=route),
        loop=ActingPolicy(max_parallel=max_parallel),
        unverified_ok=True,
    )


async def bench(reads: int, seconds: float, runs: int, tuned: bool) -> None:
    READS.update(count=reads, seconds=seconds)
    env = await start_dev_server(tuned=tuned)
    agents = {"together": agent(reads), "in turn": agent(1)}
    catalog = keel.Catalog.of([slow_read, fan_out, *agents.values()])
    address = env.client.service_client.config.target_host
    client = await keel.connect(address=address)
    queue = f"bench-parallel-{uuid.uuid4().hex[:6]}"
    walls: dict[str, list[float]] = {name: [] for name in (*agents, "raw")}
    raw_queue = f"{queue}-raw"
    raw_client, raw_worker = await plain_worker(address, raw_queue)
    async with (
        Worker(client, task_queue=queue, plugins=[keel.KeelPlugin(catalog)]),
        raw_worker,
    ):
        for _ in range(runs):
            began = time.perf_counter()
            await raw_client.execute_workflow(
                RawFanOut.run,
                args=[reads, seconds],
                id=f"raw-{uuid.uuid4().hex[:8]}",
                task_queue=raw_queue,
            )
            walls["raw"].append(time.perf_counter() - began)
            for name, spec in agents.items():
                began = time.perf_counter()
                handle = await client.start_workflow(
                    keel.AgentWorkflow.run,
                    AgentRunInput(
                        agent=AgentSpec(name=spec.name), goal="read", protocol=RUN_PROTOCOL
                    ),
                    id=f"par-{uuid.uuid4().hex[:8]}",
                    task_queue=queue,
                )
                report = await outcome(handle)
                assert report.status == "DONE", report.reason
                walls[name].append(time.perf_counter() - began)
    await env.shutdown()
    config = "tuned" if tuned else "server default"
    print(f"dev server ({config}); {reads} reads of {seconds} s in one answer, {runs} runs each")
    raw = statistics.median(walls["raw"])
    print("   mode       median_s  ratio_to_one_read  keel/raw")
    for name, values in walls.items():
        median = statistics.median(values)
        print(f"   {name:<10} {median:>8.2f}  {median / seconds:>17.1f}  {median / raw:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=0.2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run of each")
    add_server_default_flag(parser)
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    asyncio.run(bench(args.reads, args.seconds, runs, tuned=not args.server_default))
    exit_now(0)


if __name__ == "__main__":
    main()
