"""`starter.py jobs ...`: the registry's jobs on the server, from the command line.

    python starter.py jobs [--file F] [--json]     what each job is doing, and why
    python starter.py jobs sync [F] [--dry-run]    make the server's schedules match the file
    python starter.py jobs run|pause|resume NAME   fire one now; pause; resume

The file is jobs.toml in the current directory unless --file (or KEEL_JOBS_FILE) says.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from temporalio.client import Client

from keel.jobs import Change, JobRow, fire, job_rows, load_registry, pause, resume, sync


def default_file() -> Path:
    return Path(os.environ.get("KEEL_JOBS_FILE") or "jobs.toml")


def add_jobs_command(sub: Any) -> None:
    jobs = sub.add_parser("jobs", help="background jobs from a registry file (see jobs --help)")
    jobs.add_argument(
        "--file", type=Path, help="the registry (default: $KEEL_JOBS_FILE, jobs.toml)"
    )
    jobs.add_argument("--json", action="store_true", help="print JSON")
    jobs.add_argument("--task-queue", help="task queue (default: $KEEL_TASK_QUEUE or keel)")
    what = jobs.add_subparsers(dest="jobs_command")
    sync_cmd = what.add_parser("sync", help="make the server's schedules match the file")
    sync_cmd.add_argument("sync_file", nargs="?", type=Path, help="the registry file")
    sync_cmd.add_argument("--dry-run", action="store_true", help="say what would change")
    for name, text in (
        ("run", "fire a job now"),
        ("pause", "pause a job's schedule"),
        ("resume", "resume a paused job"),
    ):
        cmd = what.add_parser(name, help=text)
        cmd.add_argument("job")
        if name != "run":
            cmd.add_argument("--reason", default="", help="the note the schedule keeps")


async def jobs_command(client: Client, args: argparse.Namespace, task_queue: str) -> int:
    action = args.jobs_command
    who = os.environ.get("USER", "someone")
    if action == "run":
        await fire(client, args.job)
        print(f"fired job {args.job}; see: python starter.py jobs")
        return 0
    if action in ("pause", "resume"):
        note = f"{action}d by {who} with starter.py" + (f": {args.reason}" if args.reason else "")
        await (pause if action == "pause" else resume)(client, args.job, note)
        print(f"{action}d job {args.job}")
        return 0
    path = getattr(args, "sync_file", None) or args.file or default_file()
    registry = load_registry(path)
    if action == "sync":
        changes = await sync(client, registry, task_queue, dry_run=args.dry_run)
        return print_changes(changes, args.dry_run, args.json)
    return print_rows(await job_rows(client, registry), args.json)


def print_changes(changes: list[Change], dry_run: bool, as_json: bool) -> int:
    if as_json:
        print(json.dumps([c.model_dump() for c in changes], indent=2))
        return 0
    verb = {"create": "create", "update": "update", "delete": "delete", "unchanged": "unchanged"}
    for change in changes:
        detail = f": {change.detail}" if change.detail else ""
        prefix = "would " if dry_run and change.action != "unchanged" else ""
        print(f"{prefix}{verb[change.action]} {change.job}{detail}")
    if not changes:
        print("no jobs in the file and none on the server")
    return 0


def print_rows(rows: list[JobRow], as_json: bool) -> int:
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return 0
    if not rows:
        print("no jobs in the file", file=sys.stderr)
        return 0
    for row in rows:
        mode = " DRAFT" if row.mode == "draft" else ""
        fire_at = f"next {row.next_fire:%Y-%m-%d %H:%M:%S}" if row.next_fire else "next -"
        print(f"{row.job}{mode}  {row.state.upper()}  {fire_at}  ({row.schedule})")
        if row.why:
            print(f"    why: {row.why}")
        if row.last_run is not None:
            last = row.last_run
            at = f" at {last.at:%Y-%m-%d %H:%M:%S}" if last.at else ""
            print(f"    last: {last.run_id} {last.status}{at}: {last.summary}"[:300])
        if row.skipped_fires:
            print(f"    skipped fires: {row.skipped_fires} (overlap policy or catch-up window)")
    return 0
