"""Many runs waiting on approval at once on one worker: its memory while they wait, and how long
from approving them all until all are DONE.

    python bench/approvals.py [--runs 1000] [--hold 30] [--cache 1000 100] [--quick]
                              [--server-default]

For each worker cache size: a dev server (in memory) and one `worker.py` process; N runs of a
one-step plan whose payment needs approval start and wait. Then the same for plain temporalio
(bench/raw_workflow.py's RawApproval on its own worker process, the same cache size). The
worker's resident memory is read from /proc before the runs, when all wait, and again after
holding them `--hold` seconds (the wait itself must cost nothing); its peak (VmHWM) is
reported. Then one script approves every run (updates, 50 in flight) and the time until the
last run is DONE is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.common import SearchAttributeKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keel.devserver import add_server_default_flag, start_dev_server  # noqa: E402
from keel.humans import decide  # noqa: E402
from keel.plugin import keel_converter  # noqa: E402
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

# The raw side's modules, from bench/ (on sys.path when this runs as a script, not when Keel's
# worker loads this file for AGENT: so only the script imports them).
if __name__ == "__main__":
    from jobs import start_process
    from raw_workflow import RawApproval

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


def payment(i: int) -> AgentRunInput:
    """Run i: a one-step plan whose payment waits on approval."""
    args = {"account": f"acct{i}", "amount": 1}
    step = StepSpec(title=f"pay acct{i}", tool="post_entry", args=args)
    plan = PlanSpec(goal=f"pay acct{i}", steps=[step], unverified_ok=True)
    return AgentRunInput(agent=AGENT, goal=plan.goal, plan=plan, status_attribute=True)


async def measure(
    side: str, client: Client, raw_client: Client, address: str, runs: int, hold: float, cache: int
) -> dict:
    """One side: Keel (worker.py) or plain temporalio (bench/raw_workflow.py's RawApproval on
    its own worker process, the same cache size), measured the same way."""
    prefix = f"appr-{side}-{uuid.uuid4().hex[:6]}-"
    queue = f"bench-{prefix}"
    with tempfile.TemporaryDirectory() as tmp:
        if side == "keel":
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
            pid = worker.proc.pid
        else:
            raw_argv = [sys.executable, str(ROOT / "bench" / "raw_workflow.py"), address, queue]
            process = await start_process(
                [*raw_argv, str(cache)], "raw worker ready", Path(tmp) / "raw.log", {}
            )
            pid = process.pid

        def start(i: int) -> Awaitable[object]:
            if side == "keel":
                return start_run(client, payment(i), run_id=f"{prefix}{i}", task_queue=queue)
            return raw_client.start_workflow(
                RawApproval.run, f"acct{i}", id=f"{prefix}{i}", task_queue=queue
            )

        async def approve(i: int) -> bool:
            if side == "keel":
                said = await decide(client, f"{prefix}{i}", choice="approve", approver="bench")
                return said.startswith("accepted")
            handle = raw_client.get_workflow_handle(f"{prefix}{i}")
            return await handle.execute_update(RawApproval.decide, "approve") == "approve"

        try:
            idle_mb, _ = memory_mb(pid)
            started = time.perf_counter()
            await bounded([start(i) for i in range(runs)])
            waiting = f'{STATUS_ATTRIBUTE} = "WAITING_ON_YOU"'
            await until(client, prefix, waiting, runs, timeout=600)
            to_wait_s = time.perf_counter() - started
            waiting_mb, _ = memory_mb(pid)
            await asyncio.sleep(hold)
            held_mb, _ = memory_mb(pid)

            started = time.perf_counter()
            answers = await bounded([approve(i) for i in range(runs)])
            assert all(answers), answers.count(False)
            approve_s = time.perf_counter() - started
            completed = 'ExecutionStatus = "Completed"'
            await until(client, prefix, completed, runs, timeout=900)
            done_s = time.perf_counter() - started
            _, peak_mb = memory_mb(pid)
            done = await count(
                client, prefix, f'{STATUS_ATTRIBUTE} = "DONE"' if side == "keel" else completed
            )
        finally:
            if side == "keel":
                await worker.stop()
            else:
                process.terminate()
                await process.wait()
    return {
        "side": side,
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
        data_converter=keel_converter(None, None),
    )
    address = env.client.service_client.config.target_host
    raw_client = await Client.connect(address)  # temporalio's default converter, nothing of Keel's
    print(
        f"{'side':>5} {'cache':>6} {'runs':>5} {'idle MB':>8} {'waiting MB':>11} "
        f"{'after hold MB':>14} {'peak MB':>8} {'KB/run':>7} {'start->waiting s':>17} "
        f"{'approve-all s':>14} {'approve->all DONE s':>20} {'DONE':>5}"
    )
    failed = False
    try:
        for cache in caches:
            per_run = {}
            for side in ("keel", "raw"):
                r = await measure(side, env.client, raw_client, address, runs, hold, cache)
                per_run[side] = (r["waiting_mb"] - r["idle_mb"]) * 1024 / runs
                print(
                    f"{side:>5} {r['cache']:>6} {r['runs']:>5} {r['idle_mb']:>8.1f} "
                    f"{r['waiting_mb']:>11.1f} {r['held_mb']:>14.1f} {r['peak_mb']:>8.1f} "
                    f"{per_run[side]:>7.0f} {r['to_wait_s']:>17.1f} {r['approve_s']:>14.1f} "
                    f"{r['done_s']:>20.1f} {r['done']:>5}"
                )
                failed = failed or r["done"] != runs
            ratio = per_run["keel"] / per_run["raw"]
            print(f"cache {cache}: keel/raw KB per waiting run {ratio:.2f}")
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
