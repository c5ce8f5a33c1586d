"""One supervisor over many children, some failing once: restarts, wall time, the supervisor's
history, and that no child is left running (orphaned) at the end.

    python bench/supervisors.py [--children 100] [--failing 0.1] [--quick] [--server-default]

A dev server in memory and one in-process worker; each child is a one-step plan run (a no-op
tool) under one_for_one, transient. A tenth of them fail their first run (a non-retryable
error) and are restarted once. Figures: wall time from start to DONE, restarts in the report,
the supervisor's history (events and bytes, all its segments), and children still running.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import keel  # noqa: E402
from keel.devserver import add_server_default_flag, start_dev_server  # noqa: E402
from keel.process import exit_now  # noqa: E402
from keel.runs import segment_histories  # noqa: E402

FAILS_LEFT: dict[str, int] = {}


@keel.tool
def bench_child(key: str) -> str:
    """Fails the child's run the first time when its key was chosen to fail."""
    if FAILS_LEFT.get(key, 0) > 0:
        FAILS_LEFT[key] -= 1
        raise ApplicationError(f"{key} fails once", non_retryable=True)
    return key


def supervisor(children: int, failing: float) -> keel.SupervisorSpec:
    every = max(1, round(1 / failing)) if failing > 0 else 0
    for i in range(children):
        if every and i % every == 0:
            FAILS_LEFT[f"c{i}"] = 1
    return keel.SupervisorSpec(
        name="bench-supervisor",
        strategy="one_for_one",
        max_restarts=children,  # the bench measures restarts, not giving up
        children=tuple(
            keel.ChildSpec(
                key=f"c{i}",
                restart="transient",
                plan=keel.PlanSpec(
                    goal=f"child {i}",
                    steps=[keel.StepSpec(title="work", tool="bench_child", args={"key": f"c{i}"})],
                    unverified_ok=True,
                ),
            )
            for i in range(children)
        ),
    )


async def main(children: int, failing: float, tuned: bool) -> int:
    spec = supervisor(children, failing)
    env = await start_dev_server(tuned=tuned)
    try:
        target = env.client.service_client.config.target_host
        client = await keel.connect(address=target)
        catalog = keel.Catalog.of([bench_child, spec])
        queue = f"bench-sup-{uuid.uuid4().hex[:6]}"
        async with Worker(
            client,
            task_queue=queue,
            plugins=[keel.KeelPlugin(catalog)],
            max_concurrent_workflow_tasks=100,
        ):
            started = time.perf_counter()
            run = await keel.start(client, agent=spec.name, goal="bench", task_queue=queue)
            report = await run.result()
            wall = time.perf_counter() - started
        histories = await segment_histories(client, run.id)
        events = sum(len(h.events) for h in histories)
        size = sum(e.ByteSize() for h in histories for e in h.events)  # as the server counts
        # Every run of every child, by describe (visibility lags; describe does not).
        running = []
        for child in report.children:
            for generation in range(1, child.generation + 1):
                one = client.get_workflow_handle(f"{run.id}.{child.key}.{generation}")
                status = (await one.describe()).status
                if status is None or status.name == "RUNNING":
                    running.append(one.id)
    finally:
        await env.shutdown()
    restarts = sum(c.restarts for c in report.children)
    expected = sum(1 for v in FAILS_LEFT.values() if v == 0)  # each chosen child failed once
    print(f"server: {'tuned' if tuned else 'default'} dev server; one in-process worker")
    print(
        " children  failing  restarts  status    wall_s  per_child_ms  sup_events  sup_kb  running"
    )
    print(
        f"{children:9d}  {failing:7.2f}  {restarts:8d}  {report.status:8s}  {wall:6.2f}  "
        f"{wall / children * 1000:12.1f}  {events:10d}  {size / 1024:6.1f}  {len(running):7d}"
    )
    ok = report.status == "DONE" and restarts == expected and not running
    if not ok:
        print(f"unexpected: {report.status} {report.reason}; restarts {restarts}/{expected}")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=100)
    parser.add_argument("--failing", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="20 children")
    add_server_default_flag(parser)
    args = parser.parse_args()
    count = 20 if args.quick else args.children
    exit_now(asyncio.run(main(count, args.failing, not args.server_default)))
