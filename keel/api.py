"""Starting, watching and steering runs from your own scripts (async, like temporalio).

    client = await keel.connect()
    run = await keel.start(client, agent="ledger-clerk", goal="Pay alice 30", id="pay-1")
    print((await run.report()).status)            # live: RUNNING, WAITING_ON_YOU, ...
    await run.approve(reason="ok", approver="me")  # when it waits on you
    report = await run.result()                   # DONE or NOT_DONE: the status says which
    waiting = await keel.pending(client)          # every run waiting on a human
    same = keel.get(client, "pay-1")
    typed = await keel.start(client, agent="invoicer", goal=..., output_type=Invoice)
    invoice = await typed.output()                # an Invoice (AgentSpec(output_type=Invoice))

The client names the agent; the worker resolves it from its own catalog, so a script needs no
tool code, and the worker's refusal comes back from start(). Errors are KeelErrors (RunRefused,
RunExists, RunNotFound, DecisionRefused, ...).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, Generic, cast

from pydantic import TypeAdapter
from temporalio.client import Client, WorkflowFailureError
from typing_extensions import TypeVar

from keel.connection import task_queue as default_task_queue
from keel.humans import decide, pending_runs
from keel.live import follow
from keel.runs import cancel_run, get_report, start_run
from keel.shared.errors import KeelError
from keel.workflows.contracts import (
    PLAN_RUNNER,
    AgentRunInput,
    AgentSpec,
    Choice,
    PendingRequest,
    PlanSpec,
    RunEvent,
    RunReport,
)

logger = logging.getLogger("keel")
OutputT = TypeVar("OutputT", default=Any)  # a run started without an output_type: Run[Any]


class Run(Generic[OutputT]):
    """A run by id: its report, its outcome, and the decisions and cancel a human may send.
    With an `output_type`, result() validates the report's `output` back into that type."""

    def __init__(
        self, client: Client, run_id: str, output_type: type[OutputT] | None = None
    ) -> None:
        self.client = client
        self.id = run_id
        self.output_type = output_type

    async def report(self) -> RunReport:
        """The report as it stands (a query; with no worker, what the server knows)."""
        return await get_report(self.client, self.id)

    async def result(self) -> RunReport:
        """Wait until the run ends and return its report; NOT_DONE is a status, not an error
        (a run that failed or was terminated is NOT_DONE too, with the cause as its reason)."""
        with contextlib.suppress(WorkflowFailureError):
            await self.client.get_workflow_handle(self.id).result()
        report = await get_report(self.client, self.id)
        if self.output_type is None or report.output is None:
            return report
        typed = TypeAdapter(self.output_type).validate_python(report.output)
        return report.model_copy(update={"output": typed})

    async def output(self) -> OutputT:
        """The typed result of a run that ended DONE (`output_type` given); KeelError if it
        ended otherwise or carries none."""
        report = await self.result()
        if self.output_type is None:
            raise KeelError("output() needs the run's output_type (keel.start or keel.get)")
        if report.status != "DONE" or report.output is None:
            raise KeelError(f"run {self.id!r} has no output: {report.status}: {report.reason}")
        return cast(OutputT, report.output)

    def events(self, since: int = 0) -> AsyncIterator[RunEvent]:
        """The run's live events from offset `since` (resume with the offset after the last
        one seen), ending with its "final" event: `async for event in run.events(): ...`."""
        return follow(self.client, self.id, since)

    async def approve(self, reason: str = "", approver: str = "") -> str:
        return await self.decide("approve", reason=reason, approver=approver)

    async def reject(self, reason: str, approver: str = "") -> str:
        return await self.decide("reject", reason=reason, approver=approver)

    async def decide(
        self,
        choice: Choice,
        *,
        reason: str = "",
        args: dict[str, Any] | None = None,
        approver: str = "",
        request_id: str | None = None,
    ) -> str:
        """Answer the pending request (by update: the run says whether it accepted it)."""
        return await decide(
            self.client,
            self.id,
            choice=choice,
            request_id=request_id,
            reason=reason,
            args=args,
            approver=approver,
        )

    async def cancel(self) -> None:
        """Cancel the run: its completed writes are compensated and it ends NOT_DONE."""
        await cancel_run(self.client, self.id)


async def start(
    client: Client,
    *,
    agent: str | None = None,
    goal: str | None = None,
    plan: PlanSpec | None = None,
    id: str | None = None,
    task_queue: str | None = None,
    status_attribute: bool = True,
    output_type: type[OutputT] | None = None,
) -> Run[OutputT]:
    """Start a run of the worker's agent `agent` (or of `plan` as given) once a worker admits
    it: RunRefused when the worker does not know the agent or will not run the plan (nothing
    ran). With no worker answering within $KEEL_START_TIMEOUT s the run starts unchecked and
    the "keel" logger warns. An id that exists is refused (RunExists): starting it again would
    repeat its writes."""
    if agent is None and plan is None:
        raise KeelError("name an agent or give a plan")
    spec = AgentSpec(name=agent) if agent is not None else PLAN_RUNNER
    goal = goal or (plan.goal if plan is not None else None)
    if not goal:
        raise KeelError(f"agent {spec.name!r} needs a goal")
    run_id = id or f"{spec.name}-{uuid.uuid4().hex[:8]}"
    run_input = AgentRunInput(agent=spec, goal=goal, plan=plan, status_attribute=status_attribute)
    await start_run(
        client,
        run_input,
        run_id=run_id,
        task_queue=default_task_queue(task_queue),
        on_no_worker=logger.warning,
    )
    return Run(client, run_id, output_type)


def get(client: Client, run_id: str, output_type: type[OutputT] | None = None) -> Run[OutputT]:
    """A run started elsewhere (the starter, another script), by id."""
    return Run(client, run_id, output_type)


async def pending(client: Client) -> list[tuple[str, PendingRequest]]:
    """Every run waiting on a human, oldest request first: (run id, what it waits for)."""
    return await pending_runs(client)
