"""Many runs waiting on approval at once on one worker: its memory while they wait, and how long
from approving them all until all are DONE.

    python bench/approvals.py [--runs 1000] [--hold 30] [--cache 1000 100] [--quick]

For each worker cache size: a dev server (in memory) and one `worker.py` process; N runs of a
one-step plan whose payment needs approval start and wait. The worker's resident memory is read
from /proc before the runs, when all wait, and again after holding them `--hold` seconds (the
wait itself must cost nothing); its peak (VmHWM) is reported. Then one script approves every
run (updates, 50 in flight) and the time until the last run is DONE is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keel.devserver import add_server_default_flag, start_dev_server  # noqa: E402
from keel.humans import decide  # noqa: E402
from keel.runs import start_run  # noqa: E402
from keel.workflows.contracts import (  # noqa: E402
    STATUS_ATTRIBUTE,
    AgentRunInput,
    AgentSpec,
    ApprovalPolicy,
    Grant,
    PlanSpec,
    StepSpec,
)
from tests.processes import WorkerProcess  # noqa: E402

AGENT = AgentSpec(
    name="bench-approvals",
    approvals={"post_entry": ApprovalPolicy(timeout=timedelta(days=7))},
    grants=(Grant(scope="ledger:*"),),
)
IN_FLIGHT = 50


def memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def count(client: Client, prefix: str, clause: str) -> int:
    query = f'WorkflowId STARTS_WITH "{prefix}" AND {clause}'
    return (await client.count_workflows(query)).count


async def until(client: Client, prefix: str, clause: str, n: int, timeout: float) -> float:
    started = time.perf_counter()
    while await count(client, prefix, clause) < n:
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"fewer than {n} runs reached {clause} in {timeout:.0f} s")
        await asyncio.sleep(0.25)
    return time.perf_counter() - started


async def bounded(jobs: list, limit: int = IN_FLIGHT) -> list:
    gate = asyncio.Semaphore(limit)

    async def one(job):  # type: ignore[no-untyped-def]
        async with gate:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs))


async def measure(client: Client, address: str, runs: int, hold: float, cache: int) -> dict:
    prefix = f"appr-{uuid.uuid4().hex[:6]}-"
    queue = f"bench-{prefix}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "TEMPORAL_ADDRESS": address,
            "KEEL_LEDGER_DB": f"{tmp}/ledger.sqlite",
            "KEEL_STORE_DIR": f"{tmp}/blobs",
        }
        worker = WorkerProcess(
            env,
            Path(tmp) / "worker.log",
            "--task-queue",
            queue,
            "--tools",
            "examples.ledger",
            __file__,  # AGENT: the worker resolves a run's agent from its own catalog
            "--max-cached-workflows",
            str(cache),
        )
        await worker.start()
        assert worker.proc is not None
        try:
            idle_mb, _ = memory_mb(worker.proc.pid)
            started = time.perf_counter()
            await bounded(
                [
                    start_run(
                        client,
                        AgentRunInput(
                            agent=AGENT,
                            goal=f"pay acct{i}",
                            plan=PlanSpec(
                                goal=f"pay acct{i}",
                                steps=[
                                    StepSpec(
                                        title=f"pay acct{i}",
                                        tool="post_entry",
                                        args={"account": f"acct{i}", "amount": 1},
                                    )
                                ],
                                unverified_ok=True,
                            ),
                            status_attribute=True,
                        ),
                        run_id=f"{prefix}{i}",
                        task_queue=queue,
                    )
                    for i in range(runs)
                ]
            )
            waiting = f'{STATUS_ATTRIBUTE} = "WAITING_ON_YOU"'
            await until(client, prefix, waiting, runs, timeout=600)
            to_wait_s = time.perf_counter() - started
            waiting_mb, _ = memory_mb(worker.proc.pid)
            await asyncio.sleep(hold)
            held_mb, _ = memory_mb(worker.proc.pid)

            started = time.perf_counter()
            answers = await bounded(
                [
                    decide(client, f"{prefix}{i}", choice="approve", approver="bench")
                    for i in range(runs)
                ]
            )
            assert all(a.startswith("accepted") for a in answers), answers[:3]
            approve_s = time.perf_counter() - started
            await until(client, prefix, 'ExecutionStatus = "Completed"', runs, timeout=900)
            done_s = time.perf_counter() - started
            _, peak_mb = memory_mb(worker.proc.pid)
            done = await count(client, prefix, f'{STATUS_ATTRIBUTE} = "DONE"')
        finally:
            await worker.stop()
    return {
        "cache": cache,
        "runs": runs,
        "idle_mb": idle_mb,
        "waiting_mb": waiting_mb,
        "held_mb": held_mb,
        "peak_mb": peak_mb,
        "to_wait_s": to_wait_s,
        "approve_s": approve_s,
        "done_s": done_s,
        "done": done,
    }


async def main(runs: int, hold: float, caches: list[int], tuned: bool) -> int:
    env = await start_dev_server(
        tuned=tuned,
        search_attributes=[SearchAttributeKey.for_keyword(STATUS_ATTRIBUTE)],
        data_converter=pydantic_data_converter,
    )
    address = env.client.service_client.config.target_host
    print(
        f"{'cache':>6} {'runs':>5} {'idle MB':>8} {'waiting MB':>11} {'after hold MB':>14} "
        f"{'peak MB':>8} {'KB/run':>7} {'start->waiting s':>17} {'approve-all s':>14} "
        f"{'approve->all DONE s':>20} {'DONE':>5}"
    )
    failed = False
    try:
        for cache in caches:
            r = await measure(env.client, address, runs, hold, cache)
            per_run_kb = (r["waiting_mb"] - r["idle_mb"]) * 1024 / runs
            print(
                f"{r['cache']:>6} {r['runs']:>5} {r['idle_mb']:>8.1f} {r['waiting_mb']:>11.1f} "
                f"{r['held_mb']:>14.1f} {r['peak_mb']:>8.1f} {per_run_kb:>7.0f} "
                f"{r['to_wait_s']:>17.1f} {r['approve_s']:>14.1f} {r['done_s']:>20.1f} "
                f"{r['done']:>5}"
            )
            failed = failed or r["done"] != runs
    finally:
        await env.shutdown()
    config = "tuned" if tuned else "default (--server-default)"
    print(
        f"held {hold:g} s between 'waiting' and 'after hold'; {IN_FLIGHT} requests in flight; "
        f"{config} dev server"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=30.0, help="seconds the runs wait")
    parser.add_argument("--cache", type=int, nargs="+", default=[1000, 100])
    parser.add_argument("--quick", action="store_true", help="100 runs, 3 s hold (for CI)")
    add_server_default_flag(parser)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.hold, args.cache = 100, 3.0, [1000]
    code = asyncio.run(main(args.runs, args.hold, args.cache, not args.server_default))
    from keel.process import exit_now

    exit_now(code)
