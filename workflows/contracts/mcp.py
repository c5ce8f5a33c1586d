"""MCP servers as tools: an agent names servers (AgentSpec.mcp); the worker lists their tools by
an activity whose result the run records (so a replay sees the same list), and each call is an
activity like a native tool's, with the same retries, timeouts, grants, approval gates, audit
and redaction. What an MCP tool may do is declared here, per tool; an undeclared one is a write
that needs approval, so a server nobody reviewed cannot act freely.
"""

from __future__ import annotations

import re
from datetime import timedelta

from pydantic import Field, model_validator

from keel.workflows.contracts.base import Effect, _Frozen, _Strict
from keel.workflows.contracts.jobs import SECRET_PLACEHOLDER
from keel.workflows.contracts.policy import RetrySpec, ToolSpec

MCP_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
MCP_SEPARATOR = "__"  # a server's tool as the model sees it: SERVER__TOOL
MCP_CALL = "keel.mcp_call"  # the one activity every MCP tool call runs as
SECRET_WORDS = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


class McpToolPolicy(_Frozen):
    """What one MCP tool may do, as the agent's author declares it."""

    effect: Effect = "write"
    compensation: str | None = None  # a tool (native or SERVER__TOOL) that undoes a write
    # None: a write needs approval, a read does not.
    requires_approval: bool | None = None
    scopes: tuple[str, ...] = ()  # default: mcp:SERVER:TOOL


class McpServer(_Frozen):
    """An MCP server: a command the worker starts (stdio) or a streamable HTTP URL."""

    name: str
    command: tuple[str, ...] = ()
    url: str | None = None
    # A stdio server's environment. The declaration travels with the agent into the history,
    # so a token is written as a reference, "${NAME}", resolved by the worker when it starts
    # the server; a value that looks like a pasted key is refused.
    env: dict[str, str] = Field(default_factory=dict)
    tools: dict[str, McpToolPolicy] = Field(default_factory=dict)
    timeout: timedelta = timedelta(seconds=30)
    retry: RetrySpec = RetrySpec()

    @model_validator(mode="after")
    def _one_way_in(self) -> McpServer:
        if not MCP_NAME.match(self.name):
            raise ValueError(
                f"MCP server name {self.name!r}: lowercase letters, digits and _ (at most 31)"
            )
        if bool(self.command) == (self.url is not None):
            raise ValueError(f"MCP server {self.name!r}: give a command (stdio) or a url (HTTP)")
        for name, value in self.env.items():
            if SECRET_WORDS.search(name) and not SECRET_PLACEHOLDER.fullmatch(value):
                raise ValueError(
                    f"MCP server {self.name!r}: env {name} looks like a secret: write it as "
                    f"${{{name}}} (resolved on the worker), never the value"
                )
        return self


class McpListRequest(_Strict):
    agent: str


class McpTools(_Strict):
    """The MCP tools an agent's servers offer, as Keel tool specs (recorded in the history)."""

    tools: dict[str, ToolSpec] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)
