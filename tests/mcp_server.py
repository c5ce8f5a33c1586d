"""A real MCP server for the tests, written with the official `mcp` SDK.

    python tests/mcp_server.py stdio            # over stdin/stdout (the worker starts it)
    python tests/mcp_server.py http PORT        # streamable HTTP on 127.0.0.1:PORT/mcp

Tools: lookup (a read), send_email (a write nobody declared), crash_once (kills its own server
mid-call the first time it is called with a marker file that does not exist yet), whoami (the
server's pid, to tell a restarted server from the first).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer

server = MCPServer("keel-test")
SENT = Path(os.environ.get("KEEL_TEST_MCP_OUTBOX", "/tmp/keel-mcp-outbox"))


@server.tool()
def lookup(key: str) -> str:
    """Look up a value by key."""
    return f"value of {key}"


@server.tool()
def send_email(to: str, body: str) -> str:
    """Send an email."""
    SENT.mkdir(parents=True, exist_ok=True)
    (SENT / f"{to}.txt").write_text(body)
    return f"sent to {to}"


@server.tool()
def crash_once(marker: str) -> int:
    """Dies mid-call the first time (no marker yet); answers its pid after."""
    if not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    return os.getpid()


@server.tool()
def token_seen() -> bool:
    """Whether the worker gave this server its token (by a ${NAME} reference)."""
    return os.environ.get("KEEL_TEST_MCP_TOKEN") == "tok-2718"


@server.tool()
def whoami() -> int:
    """The server's process id."""
    return os.getpid()


if __name__ == "__main__":
    if sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
