"""Where a worker runs its workflow activations: Keel's own on the worker's event loop, every
other workflow's in a thread pool, as temporalio runs them by default.

temporalio hands each activation (a run's workflow code, woken by a batch of jobs) to a thread
and waits for it on the event loop. The hop there and back costs ~0.3-0.8 ms on a busy 2-core
machine, more than a Keel activation's own work: a local run asks for one a step (goal 3 of
issue 21 in bench/README.md). Keel's workflows are Keel's code, unsandboxed and without
blocking calls, so their activations run as a plain callback on the loop, as temporalio's own
debug mode runs every activation. What that gives up is temporalio's deadlock detection (a
workflow task failed after 2 s of workflow code) for Keel's workflows only; a user's workflows
on the same worker keep the thread, the sandbox and the detection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable
from typing import Any

from temporalio.bridge.proto.workflow_activation import WorkflowActivation


class KeelActivations(concurrent.futures.ThreadPoolExecutor):
    """A worker's `workflow_task_executor`: the thread pool temporalio makes by default (its
    threads start as activations need them), keeping Keel's runs on the loop. Which runs are
    Keel's comes from the activation that starts a run in the worker's cache (its workflow
    type); the run leaves with its eviction."""

    def __init__(self, inline_types: Iterable[str], max_threads: int = 500) -> None:
        super().__init__(max_workers=max_threads, thread_name_prefix="temporal_workflow_")
        self.inline_types = frozenset(inline_types)
        self._inline_runs: set[str] = set()

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        act = args[0] if len(args) == 1 and not kwargs else None
        if not isinstance(act, WorkflowActivation) or not self._inline(act):
            return super().submit(fn, *args, **kwargs)
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        # Called from the worker's event loop (run_in_executor). A callback, not a call from
        # here: the activation steps the run's own tasks, which Python 3.14 refuses inside
        # another task's step (temporalio's debug mode does the same).
        asyncio.get_running_loop().call_soon(self._activate, done, fn, act)
        return done

    def _inline(self, act: WorkflowActivation) -> bool:
        # A run whose instance could not even be built is evicted without reaching here, so
        # its id stays in the set: one string for each such run, however often its task is retried.
        run_id = act.run_id
        for job in act.jobs:
            started = job.HasField("initialize_workflow")
            if started and job.initialize_workflow.workflow_type in self.inline_types:
                self._inline_runs.add(run_id)
        return run_id in self._inline_runs

    def _activate(
        self,
        done: concurrent.futures.Future[Any],
        fn: Callable[[WorkflowActivation], Any],
        act: WorkflowActivation,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            done.set_result(fn(act))
        except BaseException as err:  # the worker fails the workflow task with it
            done.set_exception(err)
        finally:
            # An activation sets the run's own loop as the running one and clears it when done.
            asyncio._set_running_loop(loop)
            if any(job.HasField("remove_from_cache") for job in act.jobs):
                self._inline_runs.discard(act.run_id)
