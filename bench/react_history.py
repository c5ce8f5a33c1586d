"""History growth of an agent that acts step by step (a model call per tool call): events and
bytes per step at several N, on one dev server, with an offline scripted model.

    python bench/react_history.py [--n 20 100 300] [--quick]

Linear growth shows as flat bytes per step. Each tool result is ~200 bytes, the size of a small
real result; the context policy keeps the newest 5 in full. Bytes per step include the run's
start and its final report; the marginal cost of one more step (issue 21: under 2 KB) is the
difference between the two largest N, by event type.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from temporalio.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from counting_agent import counting_agent  # noqa: E402

from keel import KeelPlugin  # noqa: E402
from keel.activities import Catalog, tool  # noqa: E402
from keel.devserver import start_dev_server  # noqa: E402
from keel.plugin import keel_converter  # noqa: E402
from keel.runs import outcome  # noqa: E402
from keel.workflows import AgentWorkflow  # noqa: E402
from keel.workflows.contracts import RUN_PROTOCOL, AgentRunInput  # noqa: E402


@tool
def lookup(i: int) -> str:
    """A read returning a small record."""
    return f"record {i}: " + "x" * 190


next_lookup, AGENT = counting_agent("bench-react", "lookup")


async def main(sizes: list[int]) -> int:
    env = await start_dev_server(
        data_converter=keel_converter(None, None),
    )
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    print(f"{'N':>6} {'wall s':>8} {'ms/step':>8} {'events':>8} {'bytes':>11} {'bytes/step':>11}")
    by_type: dict[int, Counter[str]] = {}
    try:
        catalog = Catalog.of([lookup, next_lookup, AGENT])
        async with Worker(env.client, task_queue=queue, plugins=[KeelPlugin(catalog)]):
            for n in sizes:
                agent = AGENT.model_copy(
                    update={"loop": AGENT.loop.model_copy(update={"max_turns": n + 5})}
                )
                run_id = f"react-{n}-{uuid.uuid4().hex[:6]}"
                started = time.perf_counter()
                report = await outcome(
                    await env.client.start_workflow(
                        AgentWorkflow.run,
                        AgentRunInput(agent=agent, goal=f"look up {n}", protocol=RUN_PROTOCOL),
                        id=run_id,
                        task_queue=queue,
                    )
                )
                wall = time.perf_counter() - started
                assert report.status == "DONE" and report.step_total == n, report.reason
                history = await env.client.get_workflow_handle(run_id).fetch_history()
                size = sum(len(e.SerializeToString()) for e in history.events)
                kinds = by_type[n] = Counter()
                for event in history.events:
                    kind = str(event.WhichOneof("attributes")).removesuffix("_event_attributes")
                    kinds[kind] += len(event.SerializeToString())
                print(
                    f"{n:>6} {wall:>8.2f} {wall / n * 1000:>8.1f} {len(history.events):>8} "
                    f"{size:>11} {size / n:>11.0f}"
                )
    finally:
        await env.shutdown()
    if len(sizes) >= 2:
        small, large = sorted(sizes)[-2:]
        steps = large - small
        margin = by_type[large] - by_type[small]  # Counter subtraction keeps what grew
        print(f"one more step (N = {small} -> {large}): {margin.total() / steps:.0f} B")
        for kind, grown in margin.most_common():
            print(f"  {kind:<32} {grown / steps:>6.0f} B")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[20, 100, 300])
    parser.add_argument("--quick", action="store_true", help="N = 20 and 50 (for CI)")
    args = parser.parse_args()
    if args.quick:
        args.n = [20, 50]
    code = asyncio.run(main(args.n))
    from keel.process import exit_now

    exit_now(code)
