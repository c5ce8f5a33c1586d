"""Following a run's live events from a client: what `starter.py watch`, Run.events() and the
Server-Sent-Events bridge (`python -m keel.live`) read.

    async for event in follow(client, "pay-1", since=0):   # resumes from any offset
        print(event.offset, event.kind, event.message)      # ends after the "final" event

Events come from the run's `events` query, which costs no history: the run keeps them in its
state (rebuilt the same on replay, carried across continue-as-new), so following from an
offset after a disconnect, a worker crash or a continuation sees every event once. While no
worker answers (one crashed, none runs) the client waits and asks again. Events older than the
run keeps (its newest 256 KB) come back as one "gap" event saying which are missing.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.service import RPCError

from keel.activities.settings import OneLineParser
from keel.process import exit_now
from keel.runs import QUERY_TIMEOUT, get_report, run_must_exist
from keel.shared.errors import KeelError
from keel.workflows.agent import AgentWorkflow
from keel.workflows.contracts import RunEvent

POLL_S = 0.25  # how often a follower asks while nothing new has happened
RETRY_S = 1.0  # how long it waits when no worker answered


async def follow(
    client: Client, run_id: str, since: int = 0, poll: float = POLL_S
) -> AsyncIterator[RunEvent]:
    """The run's events from offset `since` on, live; the last one is its "final" event."""
    handle = client.get_workflow_handle(run_id)
    while True:
        try:
            page = await handle.query(AgentWorkflow.events, since, rpc_timeout=QUERY_TIMEOUT)
        except (RPCError, WorkflowQueryFailedError):
            with run_must_exist(run_id):
                desc = await handle.describe()
            if desc.status == WorkflowExecutionStatus.RUNNING:
                await asyncio.sleep(RETRY_S)  # a worker will come back and rebuild the run
                continue
            # Closed, and no worker to replay it for a query: the report has the outcome.
            report = await get_report(client, run_id)
            yield RunEvent(
                offset=since,
                at=desc.close_time or desc.start_time,
                kind="final",
                message=f"{report.status}: {report.reason}",
                outcome=report.status,
                data={"from": "report"},
            )
            return
        if page.first_kept > since:
            yield RunEvent(
                offset=since,
                at=datetime.now(UTC),  # the client's own event: its own clock
                kind="gap",
                message=f"events {since} to {page.first_kept - 1} are no longer kept by the "
                "run (it keeps its newest 256 KB); starter.py show has the whole story",
                data={"missing_to": page.first_kept - 1},
            )
        for event in page.events:
            yield event
            if event.kind == "final":
                return
        if not page.events and page.status in ("DONE", "NOT_DONE"):
            return  # asked from past the final event: nothing more will come
        since = page.next_offset
        if not page.events:
            await asyncio.sleep(poll)


# --- Server-Sent Events, for browsers ----------------------------------------------------------


async def serve(client: Client, port: int, origin: str, token: str) -> asyncio.Server:
    """GET /runs/RUN_ID/events[?since=N] as text/event-stream: one SSE message per event (its
    id is the offset, so a browser's EventSource resumes by itself with Last-Event-ID; its
    event name is the kind), closed after the final event; 204 once there is nothing more."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the browser went away
        finally:
            writer.close()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        method, target, _ = [*head[0].split(" "), "", "", ""][:3]
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        url = urlsplit(target)
        query = parse_qs(url.query)
        parts = url.path.strip("/").split("/")
        given = query.get("token", [""])[0] or headers.get("authorization", "").removeprefix(
            "Bearer "
        )
        if method != "GET" or len(parts) != 3 or parts[0] != "runs" or parts[2] != "events":
            return reply(writer, 404, origin, "GET /runs/RUN_ID/events[?since=N]")
        if token and not hmac.compare_digest(given.encode(), token.encode()):
            return reply(writer, 401, origin, "unauthorized: give ?token=KEEL_EVENTS_TOKEN")
        run_id = unquote(parts[1])
        resume = headers.get("last-event-id")
        since_text = str(int(resume) + 1) if resume and resume.isdigit() else None
        since_text = since_text or query.get("since", ["0"])[0]
        if not since_text.isdigit():
            return reply(writer, 400, origin, "since must be an offset (a whole number)")
        events = follow(client, run_id, int(since_text)).__aiter__()
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            return reply(writer, 204, origin, "")
        except KeelError as err:
            return reply(writer, 404, origin, str(err))
        writer.write(
            (
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                f"access-control-allow-origin: {origin}\r\nconnection: close\r\n\r\n"
            ).encode()
        )
        event: RunEvent | None = first
        while event is not None:
            data = event.model_dump_json()
            writer.write(f"id: {event.offset}\nevent: {event.kind}\ndata: {data}\n\n".encode())
            await writer.drain()
            event = await anext(events, None)

    return await asyncio.start_server(handle, "127.0.0.1", port)


def reply(writer: asyncio.StreamWriter, status: int, origin: str, text: str) -> None:
    body = text.encode()
    writer.write(
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: text/plain\r\n"
        f"access-control-allow-origin: {origin}\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n".encode()
        + body
    )


async def main_async(port: int, origin: str) -> None:
    from keel.connection import connect

    client = await connect()
    token = os.environ.get("KEEL_EVENTS_TOKEN", "")
    server = await serve(client, port, origin, token)
    where = f"http://127.0.0.1:{port}/runs/RUN_ID/events" + ("?token=..." if token else "")
    print(f"keel live events on {where} (for pages from {origin})", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m keel.live", description="runs' live events as SSE")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--origin", default=os.environ.get("KEEL_EVENTS_ORIGIN", "*"), help="CORS origin"
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(main_async(args.port, args.origin))
    except KeyboardInterrupt:
        return 0
    except (KeelError, OSError) as err:
        print(f"keel.live: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    exit_now(main())
