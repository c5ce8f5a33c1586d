"""Tools whose behaviour the tests script: failures, slow calls, large results."""

from __future__ import annotations

import asyncio

from activities import RetrySpec, tool, tool_context

FAST_RETRY = RetrySpec(max_attempts=3, initial_interval=1)
GATES: dict[str, asyncio.Event] = {}
CALLS: dict[str, int] = {}


def _count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


@tool(retry=FAST_RETRY)
def always_fails(label: str) -> str:
    """Fails on every attempt."""
    _count(f"always_fails:{label}")
    raise RuntimeError(f"boom ({label})")


@tool(retry=RetrySpec(max_attempts=4, initial_interval=1))
def flaky(label: str, fail_times: int) -> int:
    """Fails on its first `fail_times` attempts, then returns the attempt that succeeded."""
    _count(f"flaky:{label}")
    attempt = tool_context().attempt
    if attempt <= fail_times:
        raise ConnectionError(f"transient failure {attempt}")
    return attempt


@tool(retry=RetrySpec(max_attempts=5, non_retryable_error_types=("PermissionError",)))
def forbidden(label: str) -> str:
    """Raises an error its policy marks non-retryable."""
    _count(f"forbidden:{label}")
    raise PermissionError("not allowed")


@tool
def big_result(size: int) -> str:
    """Returns a string of `size` bytes."""
    return "x" * size


@tool(timeout=600)
async def wait_for_gate(name: str) -> str:
    """Blocks until the test opens the gate."""
    await GATES.setdefault(name, asyncio.Event()).wait()
    return f"{name} opened"


@tool(effect="write")
def touch(path: str) -> str:
    """Records a touched file without writing it."""
    tool_context().touched(path)
    return path
