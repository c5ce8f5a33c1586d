"""AgentWorkflow on the time-skipping server: outcomes, bounded retries, refusals, references."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Replayer

import examples.ledger as ledger
from examples.ledger import store
from keel import KeelPlugin
from keel.activities import BlobStore, Catalog
from keel.runs import audit_trail, outcome, segment_histories
from keel.timeline import timeline
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import (
    PLAN_RUNNER,
    AcceptanceSpec,
    AgentRunInput,
    AgentSpec,
    Grant,
    PlanSpec,
    RunReport,
    StepSpec,
)
from keel.workflows.contracts import base as contract_limits
from tests import sample_tools
from tests.conftest import keel_worker

CATALOG = Catalog.from_modules([ledger, sample_tools])


def pay(account: str, amount: int, **extra: object) -> StepSpec:
    return StepSpec(
        title=f"Pay {account} {amount}",
        tool="post_entry",
        args={"account": account, "amount": amount, **extra},
    )


def posted(account: str, expected: int) -> AcceptanceSpec:
    return AcceptanceSpec(
        criterion=f"{account} got {expected}",
        check="run_posted",
        args={"account": account, "expected": expected},
    )


def plan(
    *steps: StepSpec, acceptance: list[AcceptanceSpec] | None = None, unverified_ok: bool = True
) -> PlanSpec:
    """A plan; without acceptance it opts out of verification unless told otherwise (most
    tests here are about running steps; the verification tests set unverified_ok=False)."""
    return PlanSpec(
        goal="test", steps=list(steps), acceptance=acceptance or [], unverified_ok=unverified_ok
    )


async def until_in_history(handle: WorkflowHandle, attribute: str) -> None:
    """Wait (a condition, not a sleep) until the run's history has an event of that kind."""
    for _ in range(400):
        history = await handle.fetch_history()
        if any(e.HasField(attribute) for e in history.events):  # type: ignore[arg-type]
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"no {attribute} in the history")


async def run_plan(
    client: Client,
    queue: str,
    spec: PlanSpec,
    agent: AgentSpec = PLAN_RUNNER,
    prefix: str = "test-",
) -> RunReport:
    return await outcome(
        await client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=agent, goal=spec.goal, plan=spec),
            id=f"{prefix}{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
    )


async def test_verified_plan_is_done(ts_client: Client, ledger_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "statement.json"
    spec = plan(
        pay("alice", 30),
        pay("bob", 20),
        StepSpec(title="statement", tool="write_statement", args={"path": str(out)}),
        acceptance=[
            posted("alice", 30),
            posted("bob", 20),
            AcceptanceSpec(
                criterion="statement is JSON",
                check="file_exists",
                args={"path": str(out), "parses_as": "json"},
            ),
        ],
    )
    async with keel_worker(ts_client, CATALOG) as queue:
        report = await run_plan(ts_client, queue, spec)
    assert report.status == "DONE", report.reason
    assert report.verified is True
    assert [(s.index, s.done, s.attempts) for s in report.steps] == [(1, True, 1)] * 1 + [
        (2, True, 1),
        (3, True, 1),
    ]
    assert all(c.passed for c in report.acceptance)
    assert report.files_touched == [str(out)]
    assert json.loads(out.read_text()) == {"alice": 30, "bob": 20}
    assert store.balances() == {"alice": 30, "bob": 20}
    assert report.steps[0].started_at is not None and report.steps[0].finished_at is not None
    assert any("step 2 done" in p.message for p in report.progress)


async def test_done_means_verified_unless_the_run_opts_out(
    ts_client: Client, ledger_db: Path
) -> None:
    relaxed = AgentSpec(name="relaxed", grants=(Grant(scope="ledger:*"),), unverified_ok=True)
    async with keel_worker(ts_client, CATALOG, relaxed) as queue:
        strict = await run_plan(ts_client, queue, plan(pay("carol", 5), unverified_ok=False))
        opted = await run_plan(ts_client, queue, plan(pay("cleo", 5), unverified_ok=True))
        by_agent = await run_plan(
            ts_client, queue, plan(pay("cody", 5), unverified_ok=False), agent=relaxed
        )
    assert (strict.status, strict.verified) == ("NOT_DONE", False)
    assert strict.reason == (
        "all 1 steps completed, but nothing verified the result: declare acceptance checks or "
        "a verify route, or set unverified_ok"
    )
    assert store.balances()["carol"] == 5  # not verified is not undone: the write stays
    for report in (opted, by_agent):
        assert (report.status, report.verified) == ("DONE", False)
        assert report.reason.endswith("unverified: no acceptance check (unverified_ok)")


async def test_failed_acceptance_is_not_done(ts_client: Client, ledger_db: Path) -> None:
    async with keel_worker(ts_client, CATALOG) as queue:
        report = await run_plan(
            ts_client, queue, plan(pay("dave", 5), acceptance=[posted("dave", 6)])
        )
    assert report.status == "NOT_DONE"
    assert report.verified is False
    assert report.steps[0].done
    assert "acceptance failed: dave got 6 (dave: 5 posted, 6 expected)" in report.reason


async def test_failing_tool_stops_after_exactly_max_attempts(
    ts_client: Client, ledger_db: Path
) -> None:
    label = uuid.uuid4().hex
    spec = plan(
        pay("erin", 1),
        StepSpec(title="doomed", tool="always_fails", args={"label": label}),
        pay("erin", 2),
    )
    async with keel_worker(ts_client, CATALOG) as queue:
        report = await run_plan(ts_client, queue, spec)
    assert report.status == "NOT_DONE"
    assert sample_tools.CALLS[f"always_fails:{label}"] == 3
    failed = report.steps[1]
    assert (failed.done, failed.attempts) == (False, 3)
    assert failed.error == f"RuntimeError: boom ({label})"
    assert report.reason.startswith("step 2 'doomed' (always_fails) failed after 3 attempt(s)")
    assert not report.steps[2].done and report.steps[2].attempts == 0
    assert store.balances() == {"erin": 0}  # step 1 compensated, step 3 never ran
    assert [(c.step, c.compensation, c.status) for c in report.compensations] == [
        (1, "reverse_entry", "done")
    ]
    assert "stopped at step 2" in report.resume_notes


async def test_transient_failures_within_the_budget_are_absorbed(
    ts_client: Client, ledger_db: Path
) -> None:
    spec = plan(StepSpec(title="flaky", tool="flaky", args={"label": "x", "fail_times": 3}))
    async with keel_worker(ts_client, CATALOG) as queue:
        report = await run_plan(ts_client, queue, spec)
    assert report.status == "DONE"
    assert (report.steps[0].attempts, report.steps[0].result) == (4, 4)


async def test_non_retryable_error_fails_on_the_first_attempt(
    ts_client: Client, ledger_db: Path
) -> None:
    label = uuid.uuid4().hex
    spec = plan(StepSpec(title="denied", tool="forbidden", args={"label": label}))
    async with keel_worker(ts_client, CATALOG) as queue:
        report = await run_plan(ts_client, queue, spec)
    assert report.status == "NOT_DONE"
    assert sample_tools.CALLS[f"forbidden:{label}"] == 1
    assert report.steps[0].attempts == 1
    assert "PermissionError: not allowed" in report.reason


async def test_unknown_tool_is_refused_before_any_step(ts_client: Client, ledger_db: Path) -> None:
    spec = plan(pay("frank", 1), StepSpec(title="ghost", tool="no_such_tool"))
    async with keel_worker(ts_client, CATALOG) as queue:
        report = await run_plan(ts_client, queue, spec)
    assert report.status == "NOT_DONE"
    assert report.reason == "plan refused: step 2: unknown tool 'no_such_tool'"
    assert not any(s.done or s.attempts for s in report.steps)
    assert store.balances() == {}


async def test_bad_arguments_are_refused_before_any_step(
    ts_client: Client, ledger_db: Path
) -> None:
    bad = StepSpec(title="bad", tool="post_entry", args={"account": "g", "amount": "lots"})
    async with keel_worker(ts_client, CATALOG) as queue:
        report = await run_plan(
            ts_client, queue, plan(pay("g", 1), bad, acceptance=[posted("g", 1)])
        )
    assert report.status == "NOT_DONE"
    assert "step 2: invalid arguments for 'post_entry': amount:" in report.reason
    assert store.balances() == {}


async def test_large_result_is_kept_by_reference(ts_client: Client, ledger_db: Path) -> None:
    spec = plan(StepSpec(title="big", tool="big_result", args={"size": 100_000}))
    async with keel_worker(ts_client, CATALOG) as queue:
        report = await run_plan(ts_client, queue, spec)
    step = report.steps[0]
    assert step.done and step.result is None and step.result_ref is not None
    assert step.result_ref.size == 100_002  # the JSON string, quotes included
    assert json.loads(BlobStore.from_env().get(step.result_ref.ref)) == "x" * 100_000


async def test_scripted_model_plans_the_example(
    ts_client: Client, ledger_db: Path, tmp_path: Path
) -> None:
    out = tmp_path / "st.json"
    goal = f"Pay alice 30 and bob 20 and alice 5, then write the statement to {out}."
    async with keel_worker(ts_client, CATALOG) as queue:
        report = await outcome(
            await ts_client.start_workflow(
                AgentWorkflow.run,
                AgentRunInput(agent=ledger.ledger_clerk, goal=goal),
                id=f"test-{uuid.uuid4().hex[:8]}",
                task_queue=queue,
            )
        )
    assert report.status == "DONE", report.reason
    assert [s.tool for s in report.steps] == ["post_entry"] * 3 + ["write_statement"]
    assert [c.criterion for c in report.acceptance] == [
        "alice received 35",
        "bob received 20",
        "the statement exists and is JSON",
    ]
    assert store.balances() == {"alice": 35, "bob": 20}


async def test_a_goal_the_model_cannot_plan_is_not_done(ts_client: Client, ledger_db: Path) -> None:
    async with keel_worker(ts_client, CATALOG) as queue:
        report = await outcome(
            await ts_client.start_workflow(
                AgentWorkflow.run,
                AgentRunInput(agent=ledger.ledger_clerk, goal="do something nice"),
                id=f"test-{uuid.uuid4().hex[:8]}",
                task_queue=queue,
            )
        )
    assert report.status == "NOT_DONE"
    assert report.reason.startswith("planning failed: ScriptedModelError: no payment")
    assert report.steps == []


async def test_report_is_queryable_mid_run_and_cancel_reports_not_done(
    ts_client: Client, ledger_db: Path
) -> None:
    gate = uuid.uuid4().hex
    spec = plan(
        pay("gina", 7),
        StepSpec(title="wait", tool="wait_for_gate", args={"name": gate}),
        pay("gina", 8),
    )
    async with keel_worker(ts_client, CATALOG) as queue:
        handle = await ts_client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=PLAN_RUNNER, goal="gated", plan=spec),
            id=f"test-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        for _ in range(100):
            report = await handle.query(AgentWorkflow.report)
            if report.steps and report.steps[0].done:
                break
            await asyncio.sleep(0.05)
        assert report.status == "RUNNING"
        assert [s.done for s in report.steps] == [True, False, False]
        assert report.resume_notes == "1/3 steps done; resumes at step 2 'wait' (wait_for_gate)"
        await handle.cancel()
        # The wait_for_gate call does not heartbeat, so it cannot hear the cancel: the run
        # waits for it to finish rather than leave a call running behind its compensations.
        # Once the run has asked the call to stop (in its history), it is still running.
        await until_in_history(handle, "activity_task_cancel_requested_event_attributes")
        assert (await handle.query(AgentWorkflow.report)).status == "RUNNING"
        sample_tools.GATES.setdefault(gate, asyncio.Event()).set()
        final = await outcome(handle)
    assert final.status == "NOT_DONE"
    assert final.reason == "cancelled before the plan finished"
    assert [s.done for s in final.steps] == [True, True, False]  # step 3 never started
    assert store.balances() == {"gina": 0}  # the completed write was compensated
    assert [c.status for c in final.compensations] == ["done"]


async def test_cancel_during_a_write_compensates_it_once_it_lands(
    ts_client: Client, ledger_db: Path
) -> None:
    # post_entry heartbeats, so it hears the cancel while its thread is still inside; the
    # thread cannot be stopped, so the call reports the write it made and the run undoes it.
    spec = plan(pay("hal", 3), pay("hal", 4, pause_s=1.5), pay("hal", 5))
    async with keel_worker(ts_client, CATALOG) as queue:
        handle = await ts_client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=PLAN_RUNNER, goal="slow write", plan=spec),
            id=f"test-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        for _ in range(200):
            if store.balances().get("hal") == 7:  # step 2 committed, still inside its pause
                break
            await asyncio.sleep(0.02)
        await handle.cancel()
        final = await outcome(handle)
    assert final.status == "NOT_DONE"
    assert final.reason == "cancelled before the plan finished"
    assert [s.done for s in final.steps] == [True, True, False]
    assert [(c.step, c.status) for c in final.compensations] == [(2, "done"), (1, "done")]
    assert store.balances() == {"hal": 0}


@pytest.mark.parametrize("size", [10, 4000])
async def test_small_results_stay_inline(ts_client: Client, ledger_db: Path, size: int) -> None:
    spec = plan(StepSpec(title="small", tool="big_result", args={"size": size}))
    async with keel_worker(ts_client, CATALOG) as queue:
        report = await run_plan(ts_client, queue, spec)
    assert report.steps[0].result == "x" * size and report.steps[0].result_ref is None


async def test_long_plan_keeps_the_progress_log_bounded(ts_client: Client, ledger_db: Path) -> None:
    steps = [StepSpec(title=f"s{i}", tool="big_result", args={"size": 1}) for i in range(120)]
    async with keel_worker(ts_client, CATALOG) as queue:
        report = await run_plan(ts_client, queue, plan(*steps))
    assert report.status == "DONE" and all(s.done for s in report.steps)
    assert len(report.progress) == 200
    assert report.progress_dropped == 2 * 120 + 2 - 200  # plan + per step start/done + finish
    assert report.progress[-1].message.startswith("DONE: all 120 steps completed")


async def test_oversized_arguments_are_refused_before_anything_is_sent(
    ts_client: Client, ledger_db: Path
) -> None:
    huge = "x" * (300 * 1024)
    spec = plan(pay("uma", 2), pay("uma", 3, memo=huge))
    async with keel_worker(ts_client, CATALOG) as queue:
        report = await run_plan(ts_client, queue, spec)
        history = await ts_client.get_workflow_handle(report.run_id).fetch_history()
    # The worker's check of the plan refuses it: nothing is sent, nothing to compensate.
    assert report.status == "NOT_DONE"
    assert report.reason.startswith("plan refused: step 2: arguments of 'post_entry' are 307"), (
        report.reason
    )
    assert "over the 262144-byte limit (pass large data by reference" in report.reason
    assert store.balances() == {}
    scheduled = [
        e for e in history.events if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert scheduled == []


async def test_local_read_tools_run_without_a_server_round_trip(
    ts_client: Client, ledger_db: Path
) -> None:
    key = uuid.uuid4().hex[:6]
    spec = plan(
        StepSpec(title="read", tool="local_lookup", args={"key": key, "fail_times": 1}),
        pay("vi", 1),
    )
    async with keel_worker(ts_client, CATALOG) as queue:
        report = await run_plan(ts_client, queue, spec)
        history = await ts_client.get_workflow_handle(report.run_id).fetch_history()
    assert report.status == "DONE", report.reason
    assert report.steps[0].result == f"value of {key}" and report.steps[0].attempts == 2
    assert sample_tools.CALLS[f"local_lookup:{key}"] == 2  # bounded retries, as for any tool
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert "local_lookup" not in scheduled and "post_entry" in scheduled
    assert any(e.HasField("marker_recorded_event_attributes") for e in history.events)


async def test_a_long_plan_continues_as_new_and_stays_one_run(
    ts_client: Client, ledger_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The report keeps the newest 8 settled steps in full (200 by default) and counts the rest.
    monkeypatch.setattr(contract_limits, "STEPS_KEPT", 8)
    steps = [pay(f"w{i}", i) for i in range(1, 31)]
    accept = [posted("w30", 30)]
    agent = PLAN_RUNNER.model_copy(update={"name": "long-planner", "max_history_events": 60})
    async with keel_worker(ts_client, CATALOG, agent) as queue:
        handle = await ts_client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=agent, goal="long", plan=plan(*steps, acceptance=accept)),
            id=f"test-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        report = await outcome(handle)  # follows the continuations
        latest = await ts_client.get_workflow_handle(handle.id).query(AgentWorkflow.report)
    assert report.status == "DONE" and report.verified, report.reason
    assert report.continued >= 3 and latest.run_id == handle.id
    assert [s.index for s in report.steps] == list(range(23, 31))
    assert all(s.done for s in report.steps)
    assert (report.steps_dropped, report.steps_done, report.step_total) == (22, 30, 30)
    assert store.balances() == {f"w{i}": i for i in range(1, 31)}  # each effect once
    # The last continuation carried the newest 20 audit entries (and those of its segment);
    # the rest are counted (`starter.py audit` reads them from the carries).
    assert report.audit_dropped + len(report.audit) == 30 and len(report.audit) >= 20
    assert [e.step for e in report.audit] == list(range(31 - len(report.audit), 31))
    assert any(p.message.startswith("continuing as new after") for p in report.progress)
    # Each continuation carried the newest 20 entries of the progress log; the rest are counted.
    assert report.progress_dropped > 0
    assert report.progress_dropped + len(report.progress) > 2 * len(steps)  # started, done


async def test_the_whole_audit_trail_survives_continue_as_new(
    dev_client: Client, ledger_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The report keeps the newest 6 audit entries here (1000 by default); the run continues as
    # new before 3 new entries pile up, so each entry is in some segment's carry.
    monkeypatch.setattr(contract_limits, "AUDIT_KEPT", 6)
    steps = [pay(f"a{i}", i) for i in range(1, 21)]
    async with keel_worker(dev_client, CATALOG) as queue:
        # Replayed here, with the lowered limit its continuations depended on.
        report = await run_plan(dev_client, queue, plan(*steps), prefix="self-replayed-")
    assert report.status == "DONE", report.reason
    assert report.continued >= 6 and len(report.audit) == 6 and report.audit_dropped == 14
    trail = await audit_trail(dev_client, report.run_id)
    assert [(e.action, e.target, e.step) for e in trail] == [
        ("tool_call", "post_entry", i) for i in range(1, 21)
    ]
    # The timeline (`starter.py show`) reads every segment's history: all 20 steps are there.
    entries = await timeline(dev_client, report.run_id)
    assert [e.step for e in entries if e.kind == "step"] == list(range(1, 21))
    continued = [e for e in entries if e.name == "continued as new"]
    assert len(continued) == report.continued and entries[-1].name == "finished"
    replayer = Replayer(workflows=[], plugins=[KeelPlugin()])
    segments = await segment_histories(dev_client, report.run_id)
    assert len(segments) == report.continued + 1
    for history in segments:
        await replayer.replay_workflow(history)


async def test_a_run_continues_as_new_by_history_size_too(
    ts_client: Client, ledger_db: Path
) -> None:
    # 12 payments with 20 KB memos: ~50 KB of history per step, over 100 KB every ~2 steps.
    steps = [pay(f"s{i}", i, memo="m" * 20_000) for i in range(1, 13)]
    agent = PLAN_RUNNER.model_copy(update={"name": "size-planner", "max_history_bytes": 100_000})
    async with keel_worker(ts_client, CATALOG, agent) as queue:
        report = await run_plan(ts_client, queue, plan(*steps), agent=agent)
    assert report.status == "DONE", report.reason
    assert report.continued >= 3  # by bytes: 12 steps are far below the event limit
    assert store.balances() == {f"s{i}": i for i in range(1, 13)}


async def test_an_agent_acting_step_by_step_continues_as_new_with_its_context(
    ts_client: Client, ledger_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(contract_limits, "STEPS_KEPT", 5)
    names = [f"p{letter}" for letter in "abcdefghijkl"]  # the clerk's words: NAME AMOUNT
    goal = "Pay " + " and ".join(f"{name} {i}" for i, name in enumerate(names, 1))
    agent = ledger.ledger_agent.model_copy(
        update={"name": "short-ledger-agent", "max_history_events": 40}
    )
    async with keel_worker(ts_client, CATALOG, agent) as queue:
        report = await outcome(
            await ts_client.start_workflow(
                AgentWorkflow.run,
                AgentRunInput(agent=agent, goal=goal),
                id=f"test-{uuid.uuid4().hex[:8]}",
                task_queue=queue,
            )
        )
    # The scripted model counts the results it sees: after each continuation it still sees all.
    assert report.status == "DONE", report.reason
    assert report.continued >= 2
    # Steps keep counting across continuations and compaction: each call its own index (and so
    # its own idempotency key: every account below was paid, none skipped as a repeat).
    assert [s.args["account"] for s in report.steps] == names[-5:]
    assert [s.index for s in report.steps] == list(range(8, 13)) and report.steps_dropped == 7
    assert report.summary.startswith("paid pa 1, pb 2")
    assert store.balances() == {name: i for i, name in enumerate(names, 1)}
