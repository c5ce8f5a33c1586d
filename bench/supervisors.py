"""One supervisor over many children, some failing once: restarts, wall time, the supervisor's
history, and that no child is left running (orphaned) at the end.

    python bench/supervisors.py [--children 100] [--failing 0.1] [--quick] [--server-default]

A dev server in memory; each child is a one-step plan run (a no-op tool) under one_for_one,
transient. A tenth of them fail their first run (a non-retryable error) and are restarted once.
Figures: wall time from start to DONE, restarts in the report, the supervisor's history (events
and bytes, all its segments), children still running; and the same against plain temporalio
on the same server (bench/raw_workflow.py: a parent workflow starting a child workflow per key
and starting a failed one again, its own worker and the default converter).
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

import raw_workflow  # noqa: E402  (bench/ is on sys.path as a script)
from raw_workflow import RawSupervisor, plain_worker  # noqa: E402

import keel  # noqa: E402
from keel.devserver import add_server_default_flag, start_dev_server  # noqa: E402
from keel.process import exit_now  # noqa: E402
from keel.runs import segment_histories  # noqa: E402

FAILS_LEFT: dict[str, int] = {}


@keel.tool(local=False)  # an activity, as the raw side's child work: like for like
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


async def raw_side(
    address: str, keys: list[str], failing: list[str]
) -> tuple[float, int, int, int]:
    """Plain temporalio's wall, restarts, history events and bytes for the same children."""
    raw_workflow.FAILS_LEFT.update(dict.fromkeys(failing, 1))
    queue = f"bench-raw-sup-{uuid.uuid4().hex[:6]}"
    client, worker = await plain_worker(address, queue)
    async with worker:
        run_id = f"raw-sup-{uuid.uuid4().hex[:6]}"
        started = time.perf_counter()
        restarts = await client.execute_workflow(
            RawSupervisor.run, keys, id=run_id, task_queue=queue
        )
        wall = time.perf_counter() - started
    history = await client.get_workflow_handle(run_id).fetch_history()
    return wall, restarts, len(history.events), sum(e.ByteSize() for e in history.events)


async def main(children: int, failing: float, tuned: bool) -> int:
    spec = supervisor(children, failing)
    keys = [c.key for c in spec.children]
    failing_keys = dict(FAILS_LEFT)
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
        raw_wall, raw_restarts, raw_events, raw_size = await raw_side(
            target, keys, list(failing_keys)
        )
    finally:
        await env.shutdown()
    restarts = sum(c.restarts for c in report.children)
    expected = len(failing_keys)  # each chosen child fails once
    print(f"server: {'tuned' if tuned else 'default'} dev server; one in-process worker a side")
    print(
        " children  failing  restarts  status    wall_s  per_child_ms  sup_events  sup_kb  running"
        "  raw_wall_s  raw_events  raw_kb  keel/raw"
    )
    print(
        f"{children:9d}  {failing:7.2f}  {restarts:8d}  {report.status:8s}  {wall:6.2f}  "
        f"{wall / children * 1000:12.1f}  {events:10d}  {size / 1024:6.1f}  {len(running):7d}"
        f"  {raw_wall:10.2f}  {raw_events:10d}  {raw_size / 1024:6.1f}  {wall / raw_wall:8.2f}"
    )
    ok = report.status == "DONE" and restarts == expected == raw_restarts and not running
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
