"""What a running tool knows about its call: run, step, idempotency key, attempt, files touched.

from keel.activities import tool_context

@tool(effect="write")
def post_entry(account: str, amount: int) -> str:
    key = tool_context().idempotency_key  # the same on every retry and after a crash
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

from keel.activities.secrets import resolve
from keel.workflows.contracts import SecretRef


@dataclass
class ToolContext:
    run_id: str
    step: int
    idempotency_key: str
    attempt: int
    files_touched: list[str] = field(default_factory=list)
    secrets_used: list[str] = field(default_factory=list)

    def secret(self, ref: SecretRef | str) -> str:
        """The value of a secret named by reference; redacted from this call's result and
        errors, so it never reaches the model, the history or a log."""
        value = resolve(ref)
        self.secrets_used.append(value)
        return value

    def touched(self, path: str) -> None:
        """Record that this call created or changed `path`; it shows in the run's report."""
        if path not in self.files_touched:
            self.files_touched.append(path)


_current: ContextVar[ToolContext | None] = ContextVar("keel_tool_context", default=None)


def tool_context() -> ToolContext:
    """The context of the tool call in progress; an error outside a tool call."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("tool_context() is only available while Keel runs a tool or a check")
    return ctx
