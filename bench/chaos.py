"""Crash chaos: write plans run while a supervisor SIGKILLs the worker at seeded random moments
and restarts it, and restarts the (persisted) dev server once mid-way.

    python bench/chaos.py [--runs 30] [--kills 8] [--seed 1] [--quick]

Printed: runs finished DONE, runs lost (must be 0), duplicate effects (payments applied more
than once, counted in the ledger: must be 0), steps delivered again after a crash, and the
time from each worker restart to the next completed step (median, max).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from temporalio.client import Client  # noqa: E402
from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402

from keel.runs import outcome  # noqa: E402
from keel.workflows.agent import AgentWorkflow  # noqa: E402
from keel.workflows.contracts import (  # noqa: E402
    PLAN_RUNNER,
    RUN_PROTOCOL,
    AgentRunInput,
    PlanSpec,
    RunReport,
    StepSpec,
)
from tests.processes import WorkerProcess, run  # noqa: E402
from tests.test_temporal_dev import free_port_pair  # noqa: E402

STEPS = 12


def rows(db: Path, sql: str) -> list[tuple]:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []


def completed(db: Path) -> int:
    # No file, or no table yet (the worker creates it on its first write): nothing completed.
    found = rows(db, "SELECT COUNT(*) FROM entries") if db.exists() else []
    return found[0][0] if found else 0


async def main(runs: int, kills: int, seed: int) -> int:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="keel-chaos-"))
    port = free_port_pair()
    db = tmp / "ledger.sqlite"
    env = {
        "TEMPORAL_ADDRESS": f"localhost:{port}",
        "KEEL_TEMPORAL_DIR": str(tmp / "temporal"),
        "KEEL_LEDGER_DB": str(db),
        "KEEL_STORE_DIR": str(tmp / "blobs"),
        "KEEL_STICKY_TIMEOUT": "1",
        "KEEL_TASK_QUEUE": "chaos",
    }
    assert (await run("./temporal-dev", "up", env=env)).code == 0
    client = await Client.connect(env["TEMPORAL_ADDRESS"], data_converter=pydantic_data_converter)
    ids = [f"chaos-{uuid.uuid4().hex[:6]}-{i}" for i in range(runs)]
    for i, run_id in enumerate(ids):
        steps = [
            StepSpec(
                title=f"pay r{i}s{k}",
                tool="post_entry",
                args={"account": f"r{i}", "amount": k, "pause_s": 0.3},
            )
            for k in range(1, STEPS + 1)
        ]
        plan = PlanSpec(goal="chaos", steps=steps, unverified_ok=True)
        await client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=PLAN_RUNNER, goal="chaos", plan=plan, protocol=RUN_PROTOCOL),
            id=run_id,
            task_queue="chaos",
        )
    resumes: list[float] = []  # from the new worker process's spawn
    resumes_ready: list[float] = []  # from the moment it polls (imports and connection done)
    server_restarted = False
    generation = 0
    started = time.perf_counter()
    try:
        while True:
            generation += 1
            worker = WorkerProcess(
                env, tmp / f"worker{generation}.log", "--tools", "examples.ledger"
            )
            before = completed(db)
            restart = time.perf_counter()
            await worker.start()
            ready = time.perf_counter()
            while completed(db) == before and completed(db) < runs * STEPS:
                await asyncio.sleep(0.02)
            resumes.append(time.perf_counter() - restart)
            resumes_ready.append(time.perf_counter() - ready)
            if generation > kills or completed(db) >= runs * STEPS:
                break
            await asyncio.sleep(rng.uniform(0.5, 2.5))
            await worker.kill()
            if not server_restarted and generation >= kills // 2:
                server_restarted = True
                assert (await run("./temporal-dev", "down", env=env)).code == 0
                assert (await run("./temporal-dev", "up", env=env)).code == 0
                client = await Client.connect(
                    env["TEMPORAL_ADDRESS"], data_converter=pydantic_data_converter
                )
        reports: list[RunReport] = []
        for run_id in ids:
            handle = client.get_workflow_handle(run_id, result_type=RunReport)
            reports.append(await asyncio.wait_for(outcome(handle), 300))
        await worker.stop()
    finally:
        await run("./temporal-dev", "down", env=env)
    wall = time.perf_counter() - started
    done = sum(r.status == "DONE" for r in reports)
    expected = sum(range(1, STEPS + 1))
    balances = dict(rows(db, "SELECT account, SUM(amount) FROM entries GROUP BY account"))
    duplicates = sum(1 for i in range(runs) if balances.get(f"r{i}") != expected)
    deliveries = rows(db, "SELECT COUNT(*) FROM executions WHERE tool = 'post_entry'")[0][0]
    print(
        f"runs {runs} x {STEPS} write steps, {generation - 1} worker SIGKILLs, "
        f"dev server restarted once: {server_restarted}, seed {seed}, wall {wall:.1f} s"
    )
    print(
        f"runs finished DONE: {done}; runs lost: {runs - done}; "
        f"runs with a payment applied twice: {duplicates}"
    )
    print(f"steps delivered again after a crash: {deliveries - runs * STEPS}")
    print(
        f"worker (re)start -> next completed step: median {statistics.median(resumes):.2f} s, "
        f"max {max(resumes):.2f} s over {len(resumes)} starts; from the worker polling: median "
        f"{statistics.median(resumes_ready):.2f} s, max {max(resumes_ready):.2f} s"
    )
    return 0 if done == runs and duplicates == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="4 runs, 2 kills (for CI)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.kills = 4, 2
    code = asyncio.run(main(args.runs, args.kills, args.seed))
    from keel.process import exit_now

    exit_now(code)
