"""Many background jobs on one worker: how late each firing starts, and the worker's memory.

    python bench/jobs.py [--jobs 200] [--every 10s] [--for 100s] [--quick] [--server-default]

A dev server in memory and one worker process (python worker.py --tools examples.ledger). A
registry of `--jobs` jobs, each a one-step plan (a ledger read) firing `--every`, is synced;
after `--for` the jobs are paused and the runs left are waited for. Temporal Schedules need
the dev server (the time-skipping server has none), so the issue's 200 jobs at 1-minute
intervals for 10 minutes are run compressed: the default, 200 jobs every 10 s for 100 s, is the
same 2,000 firings at six times the rate. Figures: firings expected and seen, fire-time lag
(a run's start time minus its scheduled time, from the server: p50, p95, max), run wall time,
and the worker's RSS (peak, sampled each second, and at the end).
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
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from temporalio.client import Client  # noqa: E402

import keel  # noqa: E402
from keel.activities.settings import seconds_in  # noqa: E402
from keel.devserver import add_server_default_flag, start_dev_server  # noqa: E402
from keel.jobs import load_registry, pause, sync  # noqa: E402
from keel.process import exit_now  # noqa: E402


def registry(folder: Path, jobs: int, every: str) -> Path:
    plan = {
        "goal": "read alice's balance",
        "steps": [{"title": "read", "tool": "get_balance", "args": {"account": "alice"}}],
        "unverified_ok": True,
    }
    (folder / "read.json").write_text(json.dumps(plan))
    tables = [
        f'[jobs.j{i:04d}]\nplan = "read.json"\nevery = "{every}"\nnotify = []\n'
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


async def firings(client: Client) -> tuple[list[float], list[float], int]:
    """Each job run's fire-time lag and wall time (seconds), and the runs still open."""
    lags, walls, still_open = [], [], 0
    async for run in client.list_workflows("WorkflowType = 'AgentWorkflow'"):
        scheduled = run.search_attributes.get("TemporalScheduledStartTime")
        if not scheduled:
            continue
        at = scheduled[0]
        at = at if isinstance(at, datetime) else datetime.fromisoformat(str(at))
        lags.append((run.start_time - at).total_seconds())
        if run.close_time is None:
            still_open += 1
        else:
            walls.append((run.close_time - run.start_time).total_seconds())
    return lags, walls, still_open


async def bench(jobs: int, every: str, span: str, tuned: bool) -> None:
    env = await start_dev_server(tuned=tuned)
    address = env.client.service_client.config.target_host
    client = await keel.connect(address=address)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        queue = "bench-jobs"
        worker = await start_worker(address, queue, folder)
        reg = load_registry(registry(folder, jobs, every))
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
                lags, walls, still_open = await firings(client)
                if not still_open:
                    break
                await asyncio.sleep(1)
            final = rss_kb(worker.pid)
        finally:
            worker.terminate()
            await worker.wait()
    expected = jobs * seconds_in(span) // seconds_in(every)
    config = "tuned" if tuned else "server default"
    print(f"dev server ({config}), {jobs} jobs every {every} for {span}, one worker")
    print(f"  sync: {jobs} schedules created in {synced:.1f} s")
    print(f"  firings: {len(lags)} seen, about {expected} expected; {still_open} still open")
    print(
        f"  fire-time lag: p50 {statistics.median(lags) * 1000:.0f} ms, p95 "
        f"{percentile(lags, 0.95) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms"
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
    parser.add_argument("--quick", action="store_true", help="20 jobs every 5s for 15s")
    add_server_default_flag(parser)
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.every, args.span = 20, "5s", "15s"
    asyncio.run(bench(args.jobs, args.every, args.span, tuned=not args.server_default))
    exit_now(0)


if __name__ == "__main__":
    main()
