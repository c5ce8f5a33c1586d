"""Start agent runs and read their reports from scripts.

    python starter.py run AGENT --goal TEXT [--id ID] [--wait] [--json]
    python starter.py run [AGENT] --plan FILE.json [--id ID] [--wait] [--json]
        (an id that exists is refused; --rerun starts a closed run's id again with the same
        idempotency keys, --rerun --new-keys with keys of its own)
    python starter.py status RUN_ID [--execution E] [--json]
    python starter.py cancel RUN_ID
    python starter.py approve RUN_ID [--request ID] [--reason TEXT] [--approver NAME] [--signal]
    python starter.py reject RUN_ID --reason TEXT [--request ID] [--approver NAME] [--signal]
    python starter.py decide RUN_ID --choice retry|skip|abort|edit|extend|answer [--args JSON]
        (edit: the new arguments; extend: new budget limits; answer: the answer in --reason)
    python starter.py watch RUN_ID [--since N] [--json]  (its events, live, until it ends)
    python starter.py pending [--json]
    python starter.py audit RUN_ID [--execution E]  (who did what and when, as JSON lines)
    python starter.py show RUN_ID [--execution E] [--json]  (the timeline, from its history)
        (--execution: an earlier run of a rerun id, by the execution id `run --rerun` prints)
    python starter.py prune --older-than 7d [--dry-run] [--jobs jobs.toml]
        (removes blobs older than that from the blob store, $KEEL_STORE_DIR or
        $KEEL_STORE_URL, except those a running run pins; with --jobs, also the closed job
        runs' outbox files and outputs as old)
    python starter.py jobs [--file jobs.toml] [--json]    (see keel/jobs_cli.py)
    python starter.py jobs sync [FILE] [--dry-run] | run NAME | pause NAME | resume NAME
    python starter.py memory recall|history|contested|resolve|forget ...  (keel/memory_cli.py)

run waits until a worker admits the run: the worker resolves the agent and checks the plan, and
its refusal is an error here (exit 1); with no worker answering, the run starts unchecked and a
note on stderr says so.

Exit codes: run --wait, watch and status: 0 DONE, 3 NOT_DONE, 4 WAITING_ON_YOU, 5 RUNNING (run
--wait returns as soon as the run waits on a human; watch only when the run ends). approve,
reject, decide: 0 accepted, 6 refused, 7 not confirmed (sent with --signal, or no worker
answered within $KEEL_DECISION_TIMEOUT s: it may still apply). cancel: 0 requested, 6 refused
(the run has already ended). 1 for an error (bad input, unknown run, unreachable server), 2 for
bad usage, 141 (quietly) when the reader of its output went away. Errors are one line on stderr,
never a traceback (set KEEL_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError
from temporalio.client import Client

from keel import connect, task_queue
from keel.activities.catalog import explain
from keel.activities.settings import OneLineParser, env_choice, seconds_in
from keel.activities.store import BlobStore
from keel.humans import decide, pending_runs
from keel.jobs import load_registry, prune_job_files
from keel.jobs_cli import add_jobs_command, jobs_command
from keel.live import follow
from keel.logs import add_logging_args, configure_logging
from keel.memory_cli import add_memory_command, memory_command
from keel.process import exit_now
from keel.runs import (
    audit_trail,
    cancel_run,
    format_report,
    get_report,
    nested_reports,
    previous_execution,
    start_run,
    wait_report,
)
from keel.shared.errors import (
    DecisionNotConfirmed,
    DecisionRefused,
    KeelError,
    RunClosed,
    StoreUnavailable,
)
from keel.shared.tracing import flush_spans
from keel.telemetry import tracer, tracing_plugins
from keel.timeline import format_timeline, timeline
from keel.workflows.contracts import (
    PLAN_RUNNER,
    AgentRunInput,
    AgentSpec,
    Choice,
    PlanSpec,
    RunReport,
)

EXIT_CODES = {"DONE": 0, "NOT_DONE": 3, "WAITING_ON_YOU": 4, "RUNNING": 5}
EXIT_REFUSED = 6
EXIT_NOT_CONFIRMED = 7
EXIT_BROKEN_PIPE = 141  # as a shell tool killed by SIGPIPE


class UserError(KeelError):
    """Bad input: reported in one line, exit code 1."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="starter.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_command(sub)
    status = sub.add_parser("status", help="print a run's report")
    status.add_argument("run_id")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--execution", help="an earlier run under this id (after --rerun)")
    cancel = sub.add_parser("cancel", help="cancel a run")
    cancel.add_argument("run_id")
    add_decision_commands(sub)
    audit = sub.add_parser("audit", help="a run's audit trail as JSON lines")
    audit.add_argument("run_id")
    audit.add_argument("--execution", help="an earlier run under this id (after --rerun)")
    show = sub.add_parser("show", help="a run's timeline from its event history")
    show.add_argument("run_id")
    show.add_argument("--execution", help="an earlier run under this id (after --rerun)")
    show.add_argument("--json", action="store_true", help="print JSON")
    watch = sub.add_parser("watch", help="print a run's events live; exit with its outcome")
    watch.add_argument("run_id")
    watch.add_argument("--since", type=int, default=0, help="the offset to start from")
    watch.add_argument("--json", action="store_true", help="one JSON event per line")
    pending = sub.add_parser("pending", help="list the runs waiting on a human")
    pending.add_argument("--json", action="store_true", help="print JSON")
    prune = sub.add_parser("prune", help="remove old blobs no running run references")
    prune.add_argument(
        "--older-than", required=True, type=duration, help="age, e.g. 7d, 12h, 30m, 90s"
    )
    prune.add_argument("--dry-run", action="store_true", help="count, remove nothing")
    prune.add_argument(
        "--jobs", type=Path, help="a jobs file: also its runs' outbox files and outputs"
    )
    add_jobs_command(sub)
    add_memory_command(sub)
    for command_parser in sub.choices.values():
        add_logging_args(command_parser)
    return parser.parse_args(argv)


def add_run_command(sub: Any) -> None:
    run = sub.add_parser("run", help="start an agent run")
    run.add_argument("agent", nargs="?", help="agent name (optional with --plan)")
    run.add_argument("--goal", help="what the agent should achieve")
    run.add_argument("--plan", type=Path, help="a JSON plan file: run it as given, no model")
    run.add_argument("--id", help="run id (default: AGENT-<random>)")
    run.add_argument("--wait", action="store_true", help="wait for the outcome; exit code says it")
    run.add_argument("--json", action="store_true", help="print JSON")
    run.add_argument("--task-queue", help="task queue (default: $KEEL_TASK_QUEUE or keel)")
    run.add_argument(
        "--rerun",
        action="store_true",
        help="start a closed run's id again; writes keep their idempotency keys, so a tool "
        "that dedupes on them does not repeat a write that completed",
    )
    run.add_argument(
        "--new-keys", action="store_true", help="with --rerun: new idempotency keys (writes repeat)"
    )


def add_decision_commands(sub: Any) -> None:
    for name, text in (
        ("approve", "approve the pending request"),
        ("reject", "reject the pending request"),
        ("decide", "answer the pending request or escalation"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("run_id")
        cmd.add_argument("--request", help="request id (default: the one pending)")
        cmd.add_argument("--reason", default="", required=name == "reject")
        cmd.add_argument("--approver", default=os.environ.get("USER", ""), help="who decides")
        cmd.add_argument(
            "--signal",
            action="store_true",
            help="send as a signal: no answer, applied when a worker runs",
        )
        if name == "decide":
            cmd.add_argument("--choice", required=True, choices=list(get_args(Choice)))
            cmd.add_argument(
                "--args", help="JSON: the new arguments (edit) or budget limits (extend)"
            )


def duration(text: str) -> float:
    """Seconds in '7d', '12h', '30m' or '90s'."""
    try:
        return seconds_in(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


async def prune_blobs(
    client: Client, older_than: float, dry_run: bool, jobs_file: Path | None
) -> int:
    registry = load_registry(jobs_file) if jobs_file is not None else None
    # Open runs come from the server, never guessed: an unreachable server fails before this.
    running = {w.id async for w in client.list_workflows("ExecutionStatus = 'Running'")}
    try:
        store = BlobStore.from_env()
    except StoreUnavailable as err:
        raise UserError(str(err)) from err
    result = store.prune(running, older_than, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    print(
        f"{verb} {result.blobs_removed} blobs ({result.bytes_removed} bytes) and "
        f"{result.pins_removed} pins of closed runs from {store.location}; kept "
        f"{result.blobs_kept_for_open_runs} referenced by {len(running)} running runs and "
        f"{result.blobs_kept_young} younger than the limit"
    )
    if registry is not None:
        files = prune_job_files(registry, running, older_than, dry_run, time.time())
        print(
            f"{verb} {files.removed} job files ({files.bytes_removed} bytes: outbox and "
            f"output); kept {files.kept_for_open_runs} of open runs and {files.kept_young} "
            "younger than the limit"
        )
    return 0


def load_plan(path: Path) -> PlanSpec:
    try:
        return PlanSpec.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"cannot read plan file {path}: {err.strerror}") from err
    except ValidationError as err:
        raise UserError(f"plan file {path} does not validate: {explain(err)}") from err


def build_run(args: argparse.Namespace) -> AgentRunInput:
    """The run's input from the command line alone: the worker resolves the agent by name and
    checks the plan, so the starter needs no tool code."""
    if args.agent is None and args.plan is None:
        raise UserError("name an agent or give --plan FILE.json")
    agent = AgentSpec(name=args.agent) if args.agent else PLAN_RUNNER
    plan = load_plan(args.plan) if args.plan else None
    goal = args.goal or (plan.goal if plan else None)
    if not goal:
        raise UserError(f"agent {agent.name!r} needs a --goal")
    if args.new_keys and not args.rerun:
        raise UserError("--new-keys goes with --rerun")
    status_attribute = env_choice("KEEL_STATUS_ATTRIBUTE", "1", ("0", "1")) == "1"
    try:
        return AgentRunInput(
            agent=agent,
            goal=goal,
            plan=plan,
            status_attribute=status_attribute,
            key_scope=uuid.uuid4().hex[:12] if args.new_keys else None,
        )
    except ValidationError as err:
        raise UserError(f"the run cannot start: {explain(err)}") from err


def note(text: str) -> None:
    """A line for the user beside the output: on stderr, so --json stays parseable."""
    print(f"starter.py: {text}", file=sys.stderr)


def emit(report: RunReport, as_json: bool) -> int:
    print(report.model_dump_json(indent=2) if as_json else format_report(report))
    return EXIT_CODES[report.status]


def edit_args(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--args is not JSON: {err}") from err
    if not isinstance(value, dict):
        raise UserError("--args must be a JSON object of argument names to values")
    return value


async def send_decision(client: Client, args: argparse.Namespace) -> int:
    # approve and reject are their own choice; decide's comes from argparse's choices.
    choice: Choice = args.choice if args.command == "decide" else args.command
    try:
        answer = await decide(
            client,
            args.run_id,
            choice=choice,
            request_id=args.request,
            reason=args.reason,
            args=edit_args(getattr(args, "args", None)),
            approver=args.approver,
            by_signal=args.signal,
        )
    except DecisionRefused as err:
        print(f"starter.py: refused: {err}", file=sys.stderr)
        return EXIT_REFUSED
    except DecisionNotConfirmed as err:
        print(f"starter.py: {err}", file=sys.stderr)
        return EXIT_NOT_CONFIRMED
    print(answer)
    return 0


async def list_pending(client: Client, as_json: bool) -> int:
    waiting = await pending_runs(client)
    if as_json:
        rows = [{"run_id": run_id, "pending": p.model_dump(mode="json")} for run_id, p in waiting]
        print(json.dumps(rows, indent=2))
        return 0
    if not waiting:
        print("no run is waiting on a human")
    for run_id, p in waiting:
        chain = f"  (delegated by {' > '.join(p.chain)})" if p.chain else ""
        print(
            f"{run_id}  {p.request_id}  since {p.asked_at:%Y-%m-%d %H:%M:%S}  "
            f"deadline {p.deadline:%Y-%m-%d %H:%M:%S}  {p.reason}{chain}"
        )
    return 0


async def watch_run(client: Client, run_id: str, since: int, as_json: bool) -> int:
    """Print the run's events as they happen; the exit code is the run's outcome. Streamed
    model text is printed as it comes, on one line per model call."""
    in_text = False
    async for event in follow(client, run_id, since):
        if as_json:
            print(event.model_dump_json(), flush=True)
        elif event.kind == "model_text":
            if not in_text:
                print(f"[{event.offset}] model: ", end="")
            print(event.message, end="", flush=True)
            in_text = True
            continue
        else:
            if in_text:
                print()
            in_text = False
            where = f" step {event.step}" if event.step is not None else ""
            print(f"[{event.offset}] {event.at:%H:%M:%S} {event.kind}{where}: {event.message}")
            sys.stdout.flush()
        if event.kind == "final":
            return EXIT_CODES.get(event.outcome or "", 1)
    return 1


async def command(args: argparse.Namespace) -> int:
    if args.command == "memory":  # the store itself: no server needed
        return memory_command(args)
    run = build_run(args) if args.command == "run" else None
    # connect() brings Keel's converter and the codec of KEEL_CODEC_KEYS.
    client = await connect(plugins=tracing_plugins("keel-starter"))
    if args.command in ("approve", "reject", "decide"):
        return await send_decision(client, args)
    if args.command == "pending":
        return await list_pending(client, args.json)
    if args.command == "watch":
        return await watch_run(client, args.run_id, args.since, args.json)
    if args.command == "prune":
        return await prune_blobs(client, args.older_than, args.dry_run, args.jobs)
    if args.command == "jobs":
        return await jobs_command(client, args, task_queue(args.task_queue))
    if args.command == "audit":
        for entry in await audit_trail(client, args.run_id, args.execution):
            print(entry.model_dump_json())
        return 0
    if args.command == "show":
        entries = await timeline(client, args.run_id, args.execution)
        if args.json:
            print(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
        else:
            print(format_timeline(args.run_id, entries))
        return 0
    if args.command == "status":
        report = await get_report(client, args.run_id, args.execution)
        if args.json:
            return emit(report, as_json=True)
        print(format_report(report, await nested_reports(client, report)))
        return EXIT_CODES[report.status]
    if args.command == "cancel":
        try:
            await cancel_run(client, args.run_id)
        except RunClosed as err:
            print(f"starter.py: refused: {err}", file=sys.stderr)
            return EXIT_REFUSED
        print(f"cancel requested for {args.run_id}")
        return 0
    assert run is not None
    run_id = args.id or f"{run.agent.name}-{uuid.uuid4().hex[:8]}"
    # With tracing on, the run's spans hang under this one (the client propagates it).
    traced = {"keel.run_id": run_id, "openinference.span.kind": "CHAIN"}
    with tracer().start_as_current_span("keel.starter", attributes=traced):
        return await start_and_report(client, args, run, run_id)


async def start_and_report(
    client: Client, args: argparse.Namespace, run: AgentRunInput, run_id: str
) -> int:
    earlier = await previous_execution(client, run_id) if args.rerun else None
    said: list[str] = []
    await start_run(
        client,
        run,
        run_id=run_id,
        task_queue=task_queue(args.task_queue),
        rerun=args.rerun,
        on_no_worker=said.append,
    )
    for text in said:
        note(text)
    if earlier is not None:
        print(
            f"rerun of {run_id}: the earlier run is execution {earlier[0]} ({earlier[1]}); "
            f"see it with: starter.py status {run_id} --execution {earlier[0]}",
            file=sys.stderr,
        )
    if args.wait:  # a missing worker is said once
        report = await wait_report(client, run_id, on_no_worker=None if said else note)
        return emit(report, args.json)
    if args.json:
        print(json.dumps({"run_id": run_id, "status": "RUNNING"}))
    else:
        print(
            f"started run {run_id} (agent {run.agent.name}); see: python starter.py status {run_id}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        configure_logging(args.log_level, args.log_format, default_level="warning")
        return asyncio.run(command(args))
    except BrokenPipeError:
        # The reader went away (starter.py ... | head): nothing to say, and nothing to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeelError as err:  # bad input, settings, declarations, runs, the server: one line
        print(f"starter.py: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        if os.environ.get("KEEL_DEBUG"):
            raise
        print(f"starter.py: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        flush_spans()  # exit_now skips the SDK's own shutdown: export the starter's span now


if __name__ == "__main__":
    exit_now(main())
