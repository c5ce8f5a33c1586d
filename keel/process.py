"""What worker.py and starter.py share: where tools are found and how a command exits.

modules = tool_modules(args.tools)   # --tools, else $KEEL_TOOLS, else the example
"""

from __future__ import annotations

import os
import sys

DEFAULT_TOOLS = "examples.ledger"


def tool_modules(arg: list[str] | None) -> list[str]:
    if arg:
        return arg
    return [m for m in os.environ.get("KEEL_TOOLS", DEFAULT_TOOLS).split(",") if m]


def exit_now(code: int) -> None:
    """Exit without interpreter teardown: the SDK's Rust threads can abort a finalizing
    interpreter ("PyGILState_Release ... must be current", temporalio/sdk-python#300)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (... | head): exit as SIGPIPE would, quietly
        code = code or 141
    sys.stderr.flush()
    os._exit(code)
