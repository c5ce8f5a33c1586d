"""Keel's overhead per tool call against raw temporalio, measured in one run on one dev server.

    python bench/overhead.py [--runs 5] [--n 20 100] [--quick]

The same trivial function runs N times as a Keel AgentWorkflow with the plan given up front (a
Keel tool) and as plain temporalio (bench/raw_workflow.py: its own workflow and activity, the
default data converter, its own worker: nothing of Keel's); the two alternate on one server, and
the medians of each and their ratio are printed. Target: Keel/raw <= 1.10 at N = 100, on both
server configurations (--server-default for the server's own transfer-queue rate).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from raw_workflow import RawToolLoop, plain_worker  # bench/ is on sys.path as a script
from temporalio.client import Client
from temporalio.worker import Worker

from keel import KeelPlugin
from keel.activities import Catalog, tool
from keel.devserver import add_server_default_flag, start_dev_server
from keel.plugin import keel_converter
from keel.runs import outcome
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import PLAN_RUNNER, RUN_PROTOCOL, AgentRunInput, PlanSpec, StepSpec


@tool(local=False)
def noop(i: int) -> int:
    """Returns its argument: the cheapest possible tool, as an activity of its own (what raw
    temporalio's baseline runs)."""
    return i


@tool
def noop_local(i: int) -> int:
    """The same, declared as Keel's default declares a quick read: a local activity."""
    return i


async def history_size(client: Client, workflow_id: str) -> tuple[int, int]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return len(history.events), len(history.to_json().encode())


async def time_keel(
    client: Client, queue: str, n: int, tool_name: str = "noop"
) -> tuple[float, str]:
    steps = [StepSpec(title=f"noop {i}", tool=tool_name, args={"i": i}) for i in range(1, n + 1)]
    plan = PlanSpec(goal=f"{n} noops", steps=steps, unverified_ok=True)
    run_id = f"bench-keel-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    report = await outcome(
        await client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=PLAN_RUNNER, goal=plan.goal, plan=plan, protocol=RUN_PROTOCOL),
            id=run_id,
            task_queue=queue,
        )
    )
    elapsed = time.perf_counter() - started
    assert report.status == "DONE" and all(s.done for s in report.steps), report.reason
    return elapsed, run_id


async def time_raw(client: Client, queue: str, n: int) -> tuple[float, str]:
    run_id = f"bench-raw-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    assert await client.execute_workflow(RawToolLoop.run, n, id=run_id, task_queue=queue) == n
    return time.perf_counter() - started, run_id


async def main(runs: int, sizes: list[int], tuned: bool) -> int:
    env = await start_dev_server(
        tuned=tuned,
        data_converter=keel_converter(None, None),
    )
    client, queue = env.client, f"bench-{uuid.uuid4().hex[:6]}"
    raw_queue = f"bench-raw-{uuid.uuid4().hex[:6]}"
    raw_client, raw_worker = await plain_worker(client.service_client.config.target_host, raw_queue)
    print(
        f"{'N':>5} {'raw median s':>13} {'keel median s':>14} {'ratio':>6} "
        f"{'raw ms/step':>12} {'keel ms/step':>13} {'raw events':>11} {'keel events':>12} "
        f"{'raw B/step':>11} {'keel B/step':>12} {'local ms/step':>14}"
    )
    ratios: dict[int, float] = {}
    try:
        async with (
            Worker(client, task_queue=queue, plugins=[KeelPlugin(Catalog.of([noop, noop_local]))]),
            raw_worker,
        ):
            await time_keel(client, queue, 2)  # warm-up: sandbox import, connections
            await time_raw(raw_client, raw_queue, 2)
            for n in sizes:
                raw_times, keel_times, local_times = [], [], []
                for _ in range(runs):
                    raw_s, raw_id = await time_raw(raw_client, raw_queue, n)
                    keel_s, keel_id = await time_keel(client, queue, n)
                    local_s, _ = await time_keel(client, queue, n, "noop_local")
                    raw_times.append(raw_s)
                    keel_times.append(keel_s)
                    local_times.append(local_s)
                local_med = statistics.median(local_times)
                raw_med, keel_med = statistics.median(raw_times), statistics.median(keel_times)
                raw_events, raw_bytes = await history_size(raw_client, raw_id)
                keel_events, keel_bytes = await history_size(client, keel_id)
                ratios[n] = keel_med / raw_med
                print(
                    f"{n:>5} {raw_med:>13.3f} {keel_med:>14.3f} {ratios[n]:>6.3f} "
                    f"{raw_med / n * 1000:>12.1f} {keel_med / n * 1000:>13.1f} "
                    f"{raw_events:>11} {keel_events:>12} "
                    f"{raw_bytes / n:>11.0f} {keel_bytes / n:>12.0f} "
                    f"{local_med / n * 1000:>14.1f}"
                )
    finally:
        await env.shutdown()
    config = "tuned" if tuned else "default (--server-default)"
    print(f"server: {config} dev server; raw: plain temporalio (its own activity and converter)")
    print(f"runs per side: {runs}, alternating; target keel/raw <= 1.10 at N = 100")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--n", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--quick", action="store_true", help="2 runs of N = 20 (for CI)")
    add_server_default_flag(parser)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.n = 2, [20]
    code = asyncio.run(main(args.runs, args.n, not args.server_default))
    from keel.process import exit_now

    exit_now(code)
