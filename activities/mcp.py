"""MCP servers on the worker: one client per server, opened on first use and reused, reopened
when it fails (a stdio server that died is started again), closed when the worker stops; the
activities that list an agent's MCP tools and call one, through the same path as a native
tool's call (grants checked again, spans, redaction, large results by reference).

    tools = await list_tools(server)            # Keel tool specs, SERVER__TOOL
    value = await CONNECTIONS.call(server, "lookup", {"key": "a"})
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict
from temporalio.exceptions import ApplicationError

from keel.activities.secrets import fill_secrets
from keel.workflows.contracts import TOOL_NAME, ApprovalPolicy, ToolSpec
from keel.workflows.contracts.mcp import MCP_CALL, MCP_SEPARATOR, McpServer, McpToolPolicy


class AnyArgs(BaseModel):
    """An MCP tool's arguments: its server checks them against the schema it published."""

    model_config = ConfigDict(extra="allow")


class _Connection:
    """A client held open by a task of its own (an MCP client must be closed by the task that
    opened it), used by any call meanwhile."""

    def __init__(self, server: McpServer) -> None:
        self.server = server
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()
        self.client: Any = None
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._hold())

    async def _hold(self) -> None:
        from mcp import Client
        from mcp.client.stdio import StdioServerParameters

        server = self.server
        target: Any = server.url
        if server.command:
            env = {name: fill_secrets(value) for name, value in server.env.items()}
            target = StdioServerParameters(
                command=server.command[0], args=list(server.command[1:]), env=env or None
            )
        try:
            async with Client(target, read_timeout_seconds=server.timeout.total_seconds()) as c:
                self.client = c
                self.ready.set()
                await self.stop.wait()
        except BaseException as err:
            self.error = err
        finally:
            self.ready.set()

    async def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self.task, 10)


class McpConnections:
    """The worker's MCP clients, by server (name and how it is reached)."""

    def __init__(self) -> None:
        self._open: dict[str, _Connection] = {}  # by the server's whole declaration

    async def client(self, server: McpServer) -> Any:
        key = server.model_dump_json()
        connection = self._open.get(key)
        if connection is None or connection.task.done():
            connection = self._open[key] = _Connection(server)
        await connection.ready.wait()
        if connection.client is None:
            self._open.pop(key, None)
            raise unreachable(server, connection.error)
        return connection.client

    async def forget(self, server: McpServer) -> None:
        """Drop a client that failed: the next call opens (or starts) the server again."""
        connection = self._open.pop(server.model_dump_json(), None)
        if connection is not None:
            await connection.close()

    async def call(self, server: McpServer, tool: str, args: dict[str, Any]) -> Any:
        client = await self.client(server)
        try:
            result = await client.call_tool(tool, args)
        except Exception as err:
            await self.forget(server)  # a dead stdio server is started again on the retry
            raise ApplicationError(
                f"MCP server {server.name} failed during {tool}: {type(err).__name__}: {err}",
                type="McpServerError",
            ) from None
        text = "\n".join(getattr(b, "text", f"[{type(b).__name__}]") for b in result.content)
        if result.is_error:
            # The tool itself said it failed: the model is told, a retry would say it again.
            raise ApplicationError(
                f"{tool_name(server, tool)}: {text}",
                type="McpToolError",
                non_retryable=True,
            )
        structured = result.structured_content
        if isinstance(structured, dict) and set(structured) == {"result"}:
            return structured["result"]  # the SDK wraps a plain value so it is an object
        if structured is not None:
            return structured
        with contextlib.suppress(ValueError):
            return json.loads(text)
        return text

    async def close(self) -> None:
        for connection in list(self._open.values()):
            await connection.close()
        self._open.clear()


CONNECTIONS = McpConnections()


def unreachable(server: McpServer, err: BaseException | None) -> ApplicationError:
    where = server.url or " ".join(server.command)
    return ApplicationError(
        f"MCP server {server.name} ({where}) cannot be reached: {type(err).__name__}: {err}",
        type="McpServerError",
    )


def tool_name(server: McpServer, tool: str) -> str:
    return f"{server.name}{MCP_SEPARATOR}{tool}"


def mcp_spec(
    server: McpServer, tool: str, description: str = "", parameters: dict[str, Any] | None = None
) -> ToolSpec:
    """A server's tool as a Keel tool: what the author declared of it, else a write that needs
    approval, under the scope mcp:SERVER:TOOL."""
    policy = server.tools.get(tool, McpToolPolicy())
    needs_approval = (
        policy.requires_approval
        if policy.requires_approval is not None
        else policy.effect == "write"
    )
    return ToolSpec(
        name=tool_name(server, tool),
        description=description,
        effect=policy.effect,
        compensation=policy.compensation,
        retry=server.retry,
        timeout=server.timeout,
        approval=ApprovalPolicy() if needs_approval else None,
        parameters=parameters or {"type": "object"},
        scopes=policy.scopes or (f"mcp:{server.name}:{tool}",),
        activity=MCP_CALL,
    )


async def list_tools(server: McpServer) -> dict[str, ToolSpec]:
    """The server's tools now, as Keel tool specs (a name Keel cannot carry is skipped)."""
    client = await CONNECTIONS.client(server)
    found: dict[str, ToolSpec] = {}
    cursor = None
    for _ in range(100):  # pages
        try:
            listed = await client.list_tools(cursor=cursor)
        except Exception as err:
            await CONNECTIONS.forget(server)
            raise unreachable(server, err) from None
        for tool in listed.tools:
            name = tool_name(server, tool.name)
            if TOOL_NAME.match(name):
                found[name] = mcp_spec(server, tool.name, tool.description or "", tool.input_schema)
        cursor = listed.next_cursor
        if not cursor:
            break
    return found
