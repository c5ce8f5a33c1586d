"""Many background jobs on one worker: how late each firing starts, and the worker's memory.

    python bench/jobs.py [--jobs 200] [--every 10s] [--for 100s] [--jitter 9s] [--quick]
                         [--server-default]

A dev server in memory and one worker process (python worker.py --tools examples.ledger). A
registry of `--jobs` jobs, each a one-step plan (a ledger read) firing `--every`, is synced;
after `--for` the jobs are paused and the runs left are waited for. Temporal Schedules need
the dev server (the time-skipping server has none), so the issue's 200 jobs at 1-minute
intervals for 10 minutes are run compressed: the default, 200 jobs every 10 s for 100 s, is the
same 2,000 firings at six times the rate. Figures: firings expected and seen, fire-time lag
(when a run started minus the time its schedule picked for it, jitter applied: from the
schedules' recent actions, the newest 10 of each), run wall time, and the worker's RSS (peak,
sampled each second, and at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from temporalio.client import Client  # noqa: E402

import keel  # noqa: E402
from keel.activities.settings import seconds_in  # noqa: E402
from keel.devserver import add_server_default_flag, start_dev_server  # noqa: E402
from keel.jobs import load_registry, pause, sync  # noqa: E402
from keel.process import exit_now  # noqa: E402
from keel.workflows.contracts import schedule_id  # noqa: E402


def registry(folder: Path, jobs: int, every: str, jitter: str | None) -> Path:
    plan = {
        "goal": "read alice's balance",
        "steps": [{"title": "read", "tool": "get_balance", "args": {"account": "alice"}}],
        "unverified_ok": True,
    }
    (folder / "read.json").write_text(json.dumps(plan))
    tables = [
        f'[jobs.j{i:04d}]\nplan = "read.json"\nevery = "{every}"\nnotify = []\n'
        + (f'jitter = "{jitter}"\n' if jitter else "")
        for i in range(jobs)
    ]
    path = folder / "jobs.toml"
    path.write_text("\n".join(tables))
    return path


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def start_worker(address: str, queue: str, folder: Path) -> asyncio.subprocess.Process:
    log = folder / "worker.log"
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": address,
        "KEEL_LEDGER_DB": str(folder / "ledger.sqlite"),
        "KEEL_STORE_DIR": str(folder / "blobs"),
        "KEEL_LOG_LEVEL": "warning",
    }
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "worker.py"),
        "--tools",
        "examples.ledger",
        "--task-queue",
        queue,
        env=env,
        stdout=log.open("w"),
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
    )
    for _ in range(240):
        if "keel worker ready" in log.read_text():
            return worker
        if worker.returncode is not None:
            raise RuntimeError(f"the worker exited: {log.read_text()[-2000:]}")
        await asyncio.sleep(0.25)
    raise RuntimeError("the worker did not start within 60 s")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


async def lags(client: Client, names: list[str]) -> list[float]:
    """Each firing's lag: when its run started minus the time the schedule picked for it
    (jitter applied), from each schedule's recent actions (the server keeps its newest 10)."""
    found = []
    for name in names:
        described = await client.get_schedule_handle(schedule_id(name)).describe()
        for action in described.info.recent_actions:
            found.append((action.started_at - action.scheduled_at).total_seconds())
    return found


async def runs(client: Client) -> tuple[int, list[float], int]:
    """Job runs started, the wall time of those closed (seconds), and how many are open."""
    started, walls, still_open = 0, [], 0
    async for run in client.list_workflows("WorkflowType = 'AgentWorkflow'"):
        started += 1
        if run.close_time is None:
            still_open += 1
        else:
            walls.append((run.close_time - run.start_time).total_seconds())
    return started, walls, still_open


async def bench(jobs: int, every: str, span: str, jitter: str | None, tuned: bool) -> None:
    env = await start_dev_server(tuned=tuned)
    address = env.client.service_client.config.target_host
    client = await keel.connect(address=address)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        queue = "bench-jobs"
        worker = await start_worker(address, queue, folder)
        reg = load_registry(registry(folder, jobs, every, jitter))
        peak = 0
        try:
            began = time.monotonic()
            await sync(client, reg, queue)
            synced = time.monotonic() - began
            while time.monotonic() - began < seconds_in(span):
                peak = max(peak, rss_kb(worker.pid))
                await asyncio.sleep(1)
            for name in reg.jobs:
                await pause(client, name, "bench over")
            for _ in range(120):  # let the runs in flight end
                peak = max(peak, rss_kb(worker.pid))
                started, walls, still_open = await runs(client)
                if not still_open:
                    break
                await asyncio.sleep(1)
            final = rss_kb(worker.pid)
            late = await lags(client, sorted(reg.jobs))
        finally:
            worker.terminate()
            await worker.wait()
    expected = jobs * seconds_in(span) // seconds_in(every)
    config = "tuned" if tuned else "server default"
    spread = f", jitter {jitter}" if jitter else ", no jitter"
    print(f"dev server ({config}), {jobs} jobs every {every}{spread} for {span}, one worker")
    print(f"  sync: {jobs} schedules created in {synced:.1f} s")
    print(f"  firings: {started} runs, about {expected} expected; {still_open} still open")
    print(
        f"  fire-time lag ({len(late)} firings): p50 {statistics.median(late) * 1000:.0f} ms, "
        f"p95 {percentile(late, 0.95) * 1000:.0f} ms, max {max(late) * 1000:.0f} ms"
    )
    print(
        f"  run wall: p50 {statistics.median(walls) * 1000:.0f} ms, p95 "
        f"{percentile(walls, 0.95) * 1000:.0f} ms"
    )
    print(f"  worker RSS: peak {peak / 1024:.0f} MB, at the end {final / 1024:.0f} MB")
    await env.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--every", default="10s")
    parser.add_argument("--for", dest="span", default="100s")
    parser.add_argument("--jitter", help="fire up to this much late, at random (e.g. 9s)")
    parser.add_argument("--quick", action="store_true", help="20 jobs every 5s for 15s")
    add_server_default_flag(parser)
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.every, args.span = 20, "5s", "15s"
    run = bench(args.jobs, args.every, args.span, args.jitter, tuned=not args.server_default)
    asyncio.run(run)
    exit_now(0)


if __name__ == "__main__":
    main()
