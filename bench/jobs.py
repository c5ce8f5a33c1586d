"""Many background jobs on one worker: how late each firing starts, and the worker's memory.

    python bench/jobs.py [--jobs 200] [--every 10s] [--for 100s] [--jitter 9s] [--quick]
                         [--server-default]

A dev server in memory and one worker process (python worker.py --tools examples.ledger). A
registry of `--jobs` jobs, each a one-step plan (a ledger read) firing `--every`, is synced;
after `--for` the jobs are paused and the runs left are waited for. Then the baseline on the
same server: plain temporalio (bench/raw_workflow.py: its one-activity RawToolLoop, its own
worker process, the default converter) on as many plain Temporal Schedules, same interval.
Schedules need the dev server (the time-skipping server has none), so the issue's 200 jobs at
1-minute intervals for 10 minutes run compressed: the default, 200 jobs every 10 s for 100 s,
is the same 2,000 firings at six times the rate. Figures a side: runs, fire-time lag (when a
run started minus the time its schedule picked for it, jitter applied: from the schedules'
recent actions, the newest 10 of each), run wall time, the worker's RSS (peak, sampled each
second, and at the end), and Keel/raw ratios.
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
from asyncio.subprocess import Process
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from temporalio.client import (  # noqa: E402
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)

import keel  # noqa: E402
from keel.activities.settings import seconds_in  # noqa: E402
from keel.devserver import add_server_default_flag, start_dev_server  # noqa: E402
from keel.jobs import load_registry, sync  # noqa: E402
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


async def start_process(argv: list[str], ready: str, log: Path, env: dict[str, str]) -> Process:
    """A worker process, once it says `ready` in its log."""
    worker = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, **env},
        stdout=log.open("w"),
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
    )
    for _ in range(240):
        if ready in log.read_text():
            return worker
        if worker.returncode is not None:
            raise RuntimeError(f"the worker exited: {log.read_text()[-2000:]}")
        await asyncio.sleep(0.25)
    raise RuntimeError("the worker did not start within 60 s")


@dataclass
class Figures:
    started: int = 0
    still_open: int = 0
    walls: list[float] = field(default_factory=list)
    late: list[float] = field(default_factory=list)
    peak_kb: int = 0
    final_kb: int = 0


async def drive(
    client: Client, worker: Process, schedules: list[str], workflow_type: str, span: str
) -> Figures:
    """Let the schedules fire for `span`, pause them, wait for the runs in flight; the
    figures, with the worker's RSS sampled each second."""
    out = Figures()
    began = time.monotonic()
    while time.monotonic() - began < seconds_in(span):
        out.peak_kb = max(out.peak_kb, rss_kb(worker.pid))
        await asyncio.sleep(1)
    for sid in schedules:
        await client.get_schedule_handle(sid).pause(note="bench over")
    for _ in range(120):
        out.peak_kb = max(out.peak_kb, rss_kb(worker.pid))
        out.started, out.walls, out.still_open = await runs(client, workflow_type)
        if not out.still_open:
            break
        await asyncio.sleep(1)
    out.final_kb = rss_kb(worker.pid)
    out.late = await lags(client, schedules)
    return out


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


async def lags(client: Client, schedules: list[str]) -> list[float]:
    """Each firing's lag: when its run started minus the time the schedule picked for it
    (jitter applied), from each schedule's recent actions (the server keeps its newest 10)."""
    found = []
    for sid in schedules:
        described = await client.get_schedule_handle(sid).describe()
        for action in described.info.recent_actions:
            found.append((action.started_at - action.scheduled_at).total_seconds())
    return found


async def runs(client: Client, workflow_type: str) -> tuple[int, list[float], int]:
    """Runs started, the wall time of those closed (seconds), and how many are open."""
    started, walls, still_open = 0, [], 0
    async for run in client.list_workflows(f"WorkflowType = '{workflow_type}'"):
        started += 1
        if run.close_time is None:
            still_open += 1
        else:
            walls.append((run.close_time - run.start_time).total_seconds())
    return started, walls, still_open


def raw_schedule(n: int, every: str, jitter: str | None, queue: str) -> Schedule:
    """The baseline's job: plain temporalio's one-activity workflow on the same interval."""
    return Schedule(
        action=ScheduleActionStartWorkflow("RawToolLoop", 1, id=f"raw.j{n:04d}", task_queue=queue),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=seconds_in(every)))],
            jitter=timedelta(seconds=seconds_in(jitter)) if jitter else None,
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


def report(side: str, figures: Figures) -> None:
    late, walls = figures.late, figures.walls
    print(
        f"  {side:<5} {figures.started:>7} {figures.still_open:>5} "
        f"{statistics.median(late) * 1000:>9.0f} {percentile(late, 0.95) * 1000:>9.0f} "
        f"{statistics.median(walls) * 1000:>8.0f} {percentile(walls, 0.95) * 1000:>8.0f} "
        f"{figures.peak_kb / 1024:>8.0f} {figures.final_kb / 1024:>7.0f}"
    )


async def bench(jobs: int, every: str, span: str, jitter: str | None, tuned: bool) -> None:
    env = await start_dev_server(tuned=tuned)
    address = env.client.service_client.config.target_host
    client = await keel.connect(address=address)
    raw_client = await Client.connect(address)  # temporalio's default converter
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        worker = await start_process(
            [
                sys.executable,
                str(ROOT / "worker.py"),
                "--tools",
                "examples.ledger",
                "--task-queue",
                "bench-jobs",
            ],
            "keel worker ready",
            folder / "worker.log",
            {
                "TEMPORAL_ADDRESS": address,
                "KEEL_LEDGER_DB": str(folder / "ledger.sqlite"),
                "KEEL_STORE_DIR": str(folder / "blobs"),
                "KEEL_LOG_LEVEL": "warning",
            },
        )
        reg = load_registry(registry(folder, jobs, every, jitter))
        try:
            began = time.monotonic()
            await sync(client, reg, "bench-jobs")
            synced = time.monotonic() - began
            ours = await drive(
                client, worker, [schedule_id(n) for n in reg.jobs], "AgentWorkflow", span
            )
        finally:
            worker.terminate()
            await worker.wait()
        raw = await start_process(
            [sys.executable, str(ROOT / "bench" / "raw_workflow.py"), address, "bench-raw"],
            "raw worker ready",
            folder / "raw.log",
            {},
        )
        try:
            sids = [f"raw-job.{n:04d}" for n in range(jobs)]
            for n, sid in enumerate(sids):
                await raw_client.create_schedule(sid, raw_schedule(n, every, jitter, "bench-raw"))
            theirs = await drive(raw_client, raw, sids, "RawToolLoop", span)
        finally:
            raw.terminate()
            await raw.wait()
    expected = jobs * seconds_in(span) // seconds_in(every)
    config = "tuned" if tuned else "server default"
    spread = f", jitter {jitter}" if jitter else ", no jitter"
    print(f"dev server ({config}), {jobs} jobs every {every}{spread} for {span}, one worker")
    print(f"  sync: {jobs} schedules created in {synced:.1f} s; about {expected} firings a side")
    print("  side     runs  open  lag p50ms  lag p95ms  run p50  run p95  peakMB  endMB")
    report("keel", ours)
    report("raw", theirs)
    ratio = statistics.median(ours.late) / max(statistics.median(theirs.late), 1e-3)
    print(
        f"  keel/raw: fire lag p50 {ratio:.2f}, worker RSS peak "
        f"{ours.peak_kb / max(theirs.peak_kb, 1):.2f}"
    )
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
