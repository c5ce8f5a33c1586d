"""Starting runs and reading their reports from a client: what starter.py and tests call.

    handle = await start_run(client, AgentRunInput(...), run_id="pay-1", task_queue="keel")
    report = await get_report(client, "pay-1")   # RUNNING, DONE, NOT_DONE or WAITING_ON_YOU

A run that ended without a report of its own (failed on a determinism violation, terminated,
timed out) still gets one here: NOT_DONE with the cause in `reason`, so nothing looks stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from keel.activities.outcomes import outcome
from keel.activities.settings import env_number
from keel.connection import pollers
from keel.shared.errors import RunClosed, RunExists, RunNotFound, RunRefused
from keel.workflows.agent import AgentWorkflow
from keel.workflows.contracts import (
    RUN_PROTOCOL,
    STATUS_ATTRIBUTE,
    AgentRunInput,
    AuditEntry,
    PendingRequest,
    RunReport,
)
from keel.workflows.run_state import STATUS_KEY

QUERY_TIMEOUT = timedelta(seconds=5)
NO_WORKER_AFTER = 3.0  # seconds a waiting client lets pass before it checks for a worker


@contextmanager
def run_must_exist(run_id: str, what: str = "run") -> Iterator[None]:
    """Turns the server's NOT_FOUND for `run_id` into RunNotFound (a one-line error)."""
    try:
        yield
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            if "namespace" in err.message.lower():  # e.g. "Namespace prod is not found."
                raise RunNotFound(f"{err.message.rstrip('.')} (check TEMPORAL_NAMESPACE)") from err
            raise RunNotFound(f"no {what} with id {run_id!r}") from err
        raise


async def cancel_run(client: Client, run_id: str) -> None:
    """Ask a running run to cancel (it compensates and ends NOT_DONE); RunClosed if it ended."""
    handle = client.get_workflow_handle(run_id)
    with run_must_exist(run_id):
        desc = await handle.describe()
    if desc.status != WorkflowExecutionStatus.RUNNING:
        state = (await get_report(client, run_id)).status  # DONE or NOT_DONE, as status says
        raise RunClosed(f"run {run_id!r} has already ended ({state}); nothing to cancel")
    with run_must_exist(run_id):
        await handle.cancel()


async def status_attribute_registered(client: Client) -> bool:
    """Whether the namespace has the KeelStatus search attribute that `pending` lists by."""
    try:
        answer = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
    except RPCError:
        return False  # e.g. a Cloud API key without operator rights: run without it
    return STATUS_ATTRIBUTE in answer.custom_attributes


async def start_run(
    client: Client,
    run: AgentRunInput,
    *,
    run_id: str,
    task_queue: str,
    rerun: bool = False,
    on_no_worker: Callable[[str], None] | None = None,
) -> WorkflowHandle[AgentWorkflow, RunReport]:
    """Start a run and wait until a worker admits it: the worker is the authority on agents
    and tools, so its refusal (unknown agent, a plan it will not run) comes back here as
    RunRefused. With no worker polling `task_queue`, or none answering within
    $KEEL_START_TIMEOUT s, the run is started unchecked and `on_no_worker` hears it.

    An id that exists is refused (RunExists): starting it again would repeat its writes. With
    `rerun` a closed run's id starts again; its writes keep their idempotency keys (so a write
    that completed before is not repeated by a tool that dedupes on the key) unless the input
    asks for new ones (`AgentRunInput.key_scope`). A run the worker refused ran nothing: its id
    starts again as if new. A status attribute the namespace lacks is dropped, never upserted:
    the server would refuse every workflow task of the run."""
    if run.status_attribute and not await status_attribute_registered(client):
        run = run.model_copy(update={"status_attribute": False})
    try:
        return await admitted_start(client, run, run_id, task_queue, rerun, on_no_worker)
    except WorkflowAlreadyStartedError as err:
        existing = await get_report(client, run_id)
        if existing.refused:
            return await admitted_start(client, run, run_id, task_queue, True, on_no_worker)
        if existing.status in ("RUNNING", "WAITING_ON_YOU"):
            raise RunExists(
                f"a run with id {run_id!r} is already running ({existing.status})"
            ) from err
        raise RunExists(
            f"run {run_id!r} exists ({existing.status}: {existing.reason}); starting it again "
            "would repeat its writes. See it with: starter.py status "
            f"{run_id}; start it again with --rerun"
        ) from err


def start_timeout() -> float:
    """Seconds a client waits for a worker to admit a new run (KEEL_START_TIMEOUT, default 30)."""
    return env_number("KEEL_START_TIMEOUT", 30.0)


async def admitted_start(
    client: Client,
    run: AgentRunInput,
    run_id: str,
    task_queue: str,
    rerun: bool,
    on_no_worker: Callable[[str], None] | None,
) -> WorkflowHandle[AgentWorkflow, RunReport]:
    """Update-with-start: the run starts and its admission update rides in its first workflow
    task, so the answer costs no round trip beyond the worker's first task."""
    run = run.model_copy(update={"protocol": RUN_PROTOCOL})
    options: dict[str, Any] = {
        "id": run_id,
        "task_queue": task_queue,
        "memo": {"agent": run.agent.name, "goal": run.goal},
        # The web UI's list and run page show it: which agent, toward what.
        "static_summary": f"{run.agent.name}: {run.goal}"[:200],
        "id_conflict_policy": WorkflowIDConflictPolicy.FAIL,
        "id_reuse_policy": WorkflowIDReusePolicy.ALLOW_DUPLICATE
        if rerun
        else WorkflowIDReusePolicy.REJECT_DUPLICATE,
    }
    if run.status_attribute:  # listed as RUNNING from its start: the run need not write it
        options["search_attributes"] = TypedSearchAttributes(
            [SearchAttributePair(STATUS_KEY, "RUNNING")]
        )
    start = WithStartWorkflowOperation(AgentWorkflow.run, run, **options)
    admission = asyncio.ensure_future(
        client.execute_update_with_start_workflow(
            AgentWorkflow.admission, start_workflow_operation=start
        )
    )
    wait = start_timeout()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    why = f"no worker answered within {wait:g} s"
    unchecked = f"{why}; the run is started"
    try:
        # A worker that just started may not be listed yet: look for one after a moment.
        done, _ = await asyncio.wait({admission}, timeout=min(wait, NO_WORKER_AFTER))
        if not done and not await pollers(client, task_queue):
            why = f"no worker polls task queue {task_queue!r}"
            unchecked = (
                f"{why}; the run waits until one starts (python worker.py --task-queue "
                f"{task_queue}), which checks its agent and plan"
            )
        else:
            await asyncio.wait_for(asyncio.shield(admission), max(0.0, deadline - loop.time()))
        if admission.done():
            admission.result()  # the worker's refusal, or an error starting the run
            return await start.workflow_handle()
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        raise RunRefused(
            cause.message if isinstance(cause, ApplicationError) else str(err)
        ) from err
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        pass
    admission.cancel()
    # The SDK turns the cancel into an error on the task and on the start's handle: take both.
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await admission
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await start.workflow_handle()
    # The run may have started before the wait gave up (the server answers the start and the
    # update together): ask the server, which alone knows.
    handle = client.get_workflow_handle(run_id, result_type=RunReport)
    try:
        with run_must_exist(run_id):
            await handle.describe()
    except RunNotFound as err:
        raise RunNotFound(f"run {run_id!r} did not start: {why}") from err
    if on_no_worker is not None:
        on_no_worker(unchecked)
    return handle


async def previous_execution(client: Client, run_id: str) -> tuple[str, str] | None:
    """The newest earlier run under this id: its execution id and its Temporal status."""
    try:
        with run_must_exist(run_id):
            desc = await client.get_workflow_handle(run_id).describe()
    except RunNotFound:
        return None
    status = desc.status.name if desc.status else "UNKNOWN"
    return desc.run_id, status


async def segment_histories(
    client: Client, run_id: str, execution: str | None = None
) -> list[WorkflowHistory]:
    """The event histories of a run's segments (it continues as new when long), oldest first;
    `execution` picks an earlier run of the same id (a rerun). RunNotFound when there is none."""
    with run_must_exist(run_id):
        latest = await client.get_workflow_handle(run_id, run_id=execution).fetch_history()
    if not latest.events:
        raise RunNotFound(f"no run with id {run_id!r}")
    started = latest.events[0].workflow_execution_started_event_attributes
    if not started.continued_execution_run_id:
        return [latest]  # one segment: no need to ask visibility
    chain = started.first_execution_run_id
    if execution is not None:
        return [latest]  # that execution alone (its own continuations are not followed)
    segments = [e async for e in client.list_workflows(f"WorkflowId = '{run_id}'")]
    histories = []
    for segment in sorted(segments, key=lambda e: e.start_time):
        history = await client.get_workflow_handle(run_id, run_id=segment.run_id).fetch_history()
        first = history.events[0].workflow_execution_started_event_attributes
        if first.first_execution_run_id == chain:  # not an earlier run that reused the id
            histories.append(history)
    return histories


async def audit_trail(
    client: Client, run_id: str, execution: str | None = None
) -> list[AuditEntry]:
    """The whole audit trail of a run, across its continue-as-new segments: each segment's
    carry holds the entries of the segment before it, the report those of the last."""
    report = await get_report(client, run_id, execution)
    entries: dict[str, AuditEntry] = {}
    for history in await segment_histories(client, run_id, execution):
        started = history.events[0].workflow_execution_started_event_attributes
        if not started.input.payloads:
            continue
        (run,) = await client.data_converter.decode(started.input.payloads[:1], [AgentRunInput])
        for entry in run.carry.report.audit if run.carry else []:
            entries.setdefault(entry.model_dump_json(), entry)
    for entry in report.audit:
        entries.setdefault(entry.model_dump_json(), entry)
    return sorted(entries.values(), key=lambda e: e.at)


async def get_report(client: Client, run_id: str, execution: str | None = None) -> RunReport:
    """The run's report (the newest run under this id, or the `execution` named)."""
    handle = client.get_workflow_handle(run_id, run_id=execution, result_type=RunReport)
    with run_must_exist(run_id):
        desc = await handle.describe()
    memo = await desc.memo()
    skeleton = RunReport(
        run_id=run_id, agent=str(memo.get("agent", "?")), goal=str(memo.get("goal", "?"))
    )
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        return await handle.result()
    if desc.status == WorkflowExecutionStatus.FAILED:
        with contextlib.suppress(WorkflowFailureError):
            return await outcome(handle)  # NOT_DONE with its report; other failures below
    if desc.status == WorkflowExecutionStatus.RUNNING:
        try:
            return await handle.query(AgentWorkflow.report, rpc_timeout=QUERY_TIMEOUT)
        except (RPCError, WorkflowQueryFailedError) as err:
            # No worker to answer: the memo still says what the run waits for.
            if memo.get("pending"):
                skeleton.pending = PendingRequest.model_validate(memo["pending"])
                skeleton.status = "WAITING_ON_YOU"
                skeleton.reason = (
                    f"{skeleton.pending.reason}; no worker is running, a decision sent with "
                    "--signal applies when one returns"
                )
            else:
                skeleton.reason = f"running; no worker answered the status query ({err})"
            return skeleton
    skeleton.status = "NOT_DONE"
    from keel.timeline import rebuild_from_history  # timeline reads histories through here

    rebuilt = await rebuild_from_history(client, run_id, execution)
    skeleton.reason = f"run {rebuilt.ended}"
    skeleton.steps = rebuilt.steps
    if rebuilt.writes_left:
        skeleton.reason += f"; writes not compensated: {', '.join(rebuilt.writes_left)}"
    return skeleton


async def wait_report(
    client: Client,
    run_id: str,
    poll: float = 1.0,
    on_no_worker: Callable[[str], None] | None = None,
) -> RunReport:
    """Wait until the run ends or waits on a human, and return its report. If after a few
    seconds no worker polls the run's task queue, `on_no_worker` hears it once (and the wait
    goes on: a worker may still come)."""
    handle = client.get_workflow_handle(run_id, result_type=RunReport)
    result = asyncio.ensure_future(handle.result())
    look_for_worker_at = asyncio.get_running_loop().time() + NO_WORKER_AFTER
    try:
        with run_must_exist(run_id):
            while True:
                done, _ = await asyncio.wait({result}, timeout=poll)
                if done:
                    return result.result()
                desc = await handle.describe()
                if (await desc.memo()).get("pending"):
                    return await get_report(client, run_id)
                if (
                    on_no_worker is not None
                    and asyncio.get_running_loop().time() >= look_for_worker_at
                ):
                    look_for_worker_at = float("inf")  # once
                    if desc.task_queue and not await pollers(client, desc.task_queue):
                        on_no_worker(
                            f"no worker polls task queue {desc.task_queue!r}; the run waits "
                            f"until one starts (python worker.py --task-queue {desc.task_queue})"
                        )
    except WorkflowFailureError:
        return await get_report(client, run_id)
    finally:
        result.cancel()


async def nested_reports(client: Client, report: RunReport) -> dict[str, RunReport]:
    """The reports of a supervisor's nested supervisors, all the way down, by run id."""
    found: dict[str, RunReport] = {}
    for kid in report.children:
        if kid.supervises and kid.run_id:
            nested = await get_report(client, kid.run_id)
            found[kid.run_id] = nested
            found |= await nested_reports(client, nested)
    return found


def budget_line(report: RunReport) -> str:
    used, budget = report.used, report.budget

    def pair(spent: float, limit: float | None, money: bool = False) -> str:
        show = (lambda v: f"${v:.4f}") if money else (lambda v: f"{v:g}")
        return f"{show(spent)}/{'-' if limit is None else show(limit)}"

    return ", ".join(
        [
            f"tool calls {pair(used.tool_calls, budget.max_tool_calls)}",
            f"model calls {pair(used.model_calls, budget.max_model_calls)}",
            f"tokens in {pair(used.input_tokens, budget.max_input_tokens)}",
            f"out {pair(used.output_tokens, budget.max_output_tokens)}",
            f"cost {pair(used.cost, budget.max_cost, money=True)}",
        ]
    )


def child_tree(report: RunReport, nested: dict[str, RunReport], indent: str) -> list[str]:
    lines: list[str] = []
    for kid in report.children:
        again = f", {kid.restarts} restart(s)" if kid.restarts else ""
        lines.append(
            f"{indent}[{kid.status}] {kid.key}: {kid.runs} ({kid.restart}{again})  {kid.run_id}"
        )
        if kid.reason:
            lines.append(f"{indent}  {kid.reason}")
        if kid.run_id in nested:
            lines += child_tree(nested[kid.run_id], nested, indent + "    ")
    return lines


def format_report(report: RunReport, nested: dict[str, RunReport] | None = None) -> str:
    """The report for a terminal: status first, then steps, acceptance and progress; a
    supervisor's children as a tree (with `nested`, the reports of nested supervisors)."""
    lines = [f"run {report.run_id}  {report.status}", f"  agent: {report.agent}"]
    lines += [f"  goal: {report.goal}", f"  reason: {report.reason}"]
    lines.append(f"  verified: {'yes' if report.verified else 'no'}")
    if report.steps:
        lines.append("  steps:")
        if report.steps_dropped:
            lines.append(
                f"    ({report.steps_dropped} earlier steps, {report.steps_dropped_done} done, "
                "are counted only: the report keeps the newest in full)"
            )
        for s in report.steps:
            box = "x" if s.done else " "
            extra = f"  error: {s.error}" if s.error else ""
            lines.append(
                f"    [{box}] {s.index}. {s.title}  ({s.tool}, attempts={s.attempts}){extra}"
            )
    if report.acceptance:
        lines.append("  acceptance:")
        for c in report.acceptance:
            mark = {True: "pass", False: "FAIL", None: "----"}[c.passed]
            lines.append(f"    [{mark}] {c.criterion}  {c.detail}".rstrip())
    if report.summary:
        lines.append(f"  model's summary: {report.summary}")
    if report.output is not None:
        lines.append(f"  output: {json.dumps(report.output, sort_keys=True)}")
    lines.append("  budget (used / allowed): " + budget_line(report))
    if report.pending is not None:
        p = report.pending
        lines.append(f"  waiting on you: {p.reason}")
        lines.append(f"    request {p.request_id} ({p.kind}), step {p.step}, tool {p.tool}")
        lines.append(f"    args: {p.args_summary}")
        lines.append(f"    asked {p.asked_at}, deadline {p.deadline} (then: {p.on_timeout})")
        lines.append(f"    choices: {', '.join(p.choices)}")
    if report.compensations:
        lines.append("  compensations:")
        for undo in report.compensations:
            lines.append(
                f"    step {undo.step} {undo.compensation}: {undo.status}"
                + (f" ({undo.error})" if undo.error else "")
            )
    if report.children:
        lines.append("  children:")
        lines += child_tree(report, nested or {}, "    ")
    if report.files_touched:
        lines.append("  files touched: " + ", ".join(report.files_touched))
    if report.resume_notes:
        lines.append(f"  resume notes: {report.resume_notes}")
    return "\n".join(lines)
