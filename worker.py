"""Run a Keel worker: AgentWorkflow, Keel's activities and the tools found in your modules.

    python worker.py [--task-queue Q] [--tools MODULE_OR_FILE ...] [--skills DIR ...]

Connection settings come from the environment (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
TEMPORAL_API_KEY, TLS settings: temporalio's envconfig), so the same command serves the local
dev server, a Temporal cluster and Temporal Cloud. Ctrl-C or SIGTERM stops it gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

from keel import KeelPlugin, connect, task_queue
from keel.activities.catalog import Catalog
from keel.activities.mcp import CONNECTIONS as MCP_CONNECTIONS
from keel.activities.settings import OneLineParser, env_count, env_number
from keel.activities.store import BlobStore, inline_limit
from keel.activities.tool import calls_in_threads
from keel.codec import AesGcmCodec
from keel.connection import pollers
from keel.logs import add_logging_args, configure_logging, redact_output
from keel.process import DEFAULT_TOOLS, exit_now, tool_modules
from keel.shared.errors import CatalogError, KeelError
from keel.shared.tracing import flush_spans
from keel.telemetry import install_runtime, tracing_plugins

LOG = logging.getLogger("keel.worker")
LOG.setLevel(logging.INFO)  # "ready" and "stopping" show at any --log-level: scripts wait on them


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="worker.py", description=__doc__.splitlines()[0])
    parser.add_argument("--task-queue", help="task queue (default: $KEEL_TASK_QUEUE or keel)")
    parser.add_argument(
        "--tools",
        nargs="+",
        default=None,
        metavar="MODULE",
        help="modules (dotted path or .py file) whose @tool, @check and agents to serve "
        f"(default: $KEEL_TOOLS, comma-separated, or {DEFAULT_TOOLS})",
    )
    parser.add_argument(
        "--skills",
        nargs="+",
        default=[p for p in os.environ.get("KEEL_SKILLS", "").split(",") if p],
        metavar="DIR",
        help="skill directories (each with a SKILL.md, or a directory of them) the worker's "
        "agents may load (default: $KEEL_SKILLS, comma-separated)",
    )
    parser.add_argument(
        "--sticky-timeout",
        type=float,
        default=env_number("KEEL_STICKY_TIMEOUT", 3.0),
        help="seconds a workflow task waits for this worker's cache before any worker takes it; "
        "bounds the resume delay after a crash (default 3; the SDK's default is 10)",
    )
    parser.add_argument(
        "--max-cached-workflows",
        type=int,
        default=env_count("KEEL_MAX_CACHED_WORKFLOWS", 1000),
        help="runs kept in memory between their tasks; a run evicted from the cache is replayed "
        "from its history when it wakes, so this bounds memory, not what can wait (default 1000)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=env_number("KEEL_SHUTDOWN_GRACE", 5.0),
        help="seconds running activities get to finish on Ctrl-C or SIGTERM before they are "
        "cancelled; the worker exits at most 5 s later, abandoning a sync tool that never "
        "returns (default 5)",
    )
    parser.add_argument(
        "--metrics-address",
        default=os.environ.get("KEEL_METRICS_ADDRESS") or None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics (Temporal's and keel_*) on http://HOST:PORT/metrics "
        "(default: $KEEL_METRICS_ADDRESS, else none)",
    )
    add_logging_args(parser)
    args = parser.parse_args(argv)
    if args.max_cached_workflows < 0:
        parser.error("--max-cached-workflows must be 0 or more")
    if args.shutdown_grace < 0:
        parser.error("--shutdown-grace must be 0 or more")
    return args


async def serve(args: argparse.Namespace) -> None:
    catalog = Catalog.from_modules(tool_modules(args.tools))
    for where in args.skills:
        catalog.add_skills(Path(where))
    catalog.check()  # a declaration that could only fail mid-run stops the worker here
    store = BlobStore.from_env()  # a bad KEEL_STORE_URL or a missing boto3 fails here, not mid-run
    codec = AesGcmCodec.from_env()
    plugins = [KeelPlugin(catalog, codec=codec), *tracing_plugins("keel-worker")]
    client = await connect(plugins=plugins)
    queue = task_queue(args.task_queue)
    fingerprint = catalog.fingerprint()
    await refuse_a_queue_with_another_catalog(client, queue, fingerprint)
    worker = Worker(
        client,
        task_queue=queue,
        identity=f"{os.getpid()}@{socket.gethostname()} {CATALOG_MARK}{fingerprint}",
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=args.sticky_timeout),
        max_cached_workflows=args.max_cached_workflows,
        graceful_shutdown_timeout=timedelta(seconds=args.shutdown_grace),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running = asyncio.create_task(worker.run())
    tools = ", ".join(sorted(catalog.tools))
    LOG.info(f"blob store: {store.location}")
    LOG.info(f"keel worker ready: task queue {queue!r}, tools: {tools}")
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if running.done():  # the worker failed on its own: say why
        stopping.cancel()
        running.result()
        return
    LOG.info("keel worker stopping")
    await stop_within(worker, running, args.shutdown_grace + CANCEL_GRACE)
    await asyncio.wait_for(MCP_CONNECTIONS.close(), CANCEL_GRACE)  # stdio servers stop with us


# In each worker's identity, so peers can compare catalogs. Short: the identity is recorded in
# every workflow and activity task's started and completed events (8 a step of an agent).
CATALOG_MARK = "keel:"
RECENT_POLL = timedelta(seconds=75)  # a live worker polls at least this often (60 s long polls)


async def refuse_a_queue_with_another_catalog(client: Client, queue: str, mine: str) -> None:
    """Workers sharing a task queue must serve the same catalog: otherwise a run is refused or
    not depending on which worker takes it. A worker that polled within RECENT_POLL with another
    catalog stops this one, unless it was a process on this host that has exited."""
    now = datetime.now(UTC)
    for activities in (False, True):
        for poller in await pollers(client, queue, activities=activities):
            _, _, theirs = poller.identity.partition(CATALOG_MARK)
            seen = poller.last_access_time.ToDatetime(tzinfo=UTC)
            if not theirs or theirs == mine or now - seen > RECENT_POLL:
                continue
            who = poller.identity.split()[0]
            if _exited_here(who):
                continue
            raise CatalogError(
                f"task queue {queue!r} is served by a worker with another catalog ({who}, "
                f"catalog {theirs}; this one is {mine}): serve the same tools and agents, or "
                f"use another --task-queue (a stopped worker on another host is forgotten "
                f"{RECENT_POLL.seconds} s after its last poll)"
            )


def _exited_here(who: str) -> bool:
    """Whether `who` ("pid@host") names a process of this host that no longer runs."""
    pid, _, host = who.partition("@")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, under another user
    return False


CANCEL_GRACE = 5.0  # seconds cancelled activities get to report before the worker gives up


async def stop_within(worker: Worker, running: asyncio.Task[None], seconds: float) -> None:
    """Shut the worker down, but never wait longer than `seconds`: a sync tool that ignores its
    timeout holds a thread nothing can stop, and would keep the worker alive forever."""
    try:
        await asyncio.wait_for(worker.shutdown(), seconds)
        await running
    except TimeoutError:
        hung = calls_in_threads()
        LOG.warning(
            f"keel worker stopped after {seconds:g} s leaving {len(hung)} tool calls running in "
            f"threads (abandoned: the server retries each after its timeout, with the same "
            f"idempotency key): {'; '.join(hung) or 'none found'}"
        )
        flush_spans()
        exit_now(0)  # the abandoned threads and tasks would block interpreter teardown


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        redact_output()  # before the log handler takes sys.stderr: tools may print secrets
        configure_logging(args.log_level, args.log_format)
        inline_limit()  # read now: a bad KEEL_INLINE_LIMIT stops the worker, not a tool call
        install_runtime(args.metrics_address)
        asyncio.run(serve(args))
    except KeelError as err:  # settings, declarations, the server, the store: one line
        print(f"worker.py: error: {err}", file=sys.stderr)
        return 1
    finally:
        flush_spans()  # exit_now skips the SDK's shutdown: the last workflow spans go now
    return 0


if __name__ == "__main__":
    exit_now(main())
