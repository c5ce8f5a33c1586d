"""Holding under attack (issue 13): each test names the item of the attack it closes.

The cancel race (item 1) has its own module, tests/test_cancel_race.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

import examples.ledger as ledger
from examples.ledger import store
from keel import KeelPlugin
from keel.activities import Catalog
from keel.activities.models import context_store
from keel.activities.retry import JITTER, jittered_delay
from keel.activities.store import DirectoryStore
from keel.humans import decide
from keel.runs import outcome
from keel.shared.authz import authorize, grant_covers
from keel.shared.bounds import PAYLOAD_LIMIT, fit, json_size
from keel.shared.errors import BlobCorrupted, CatalogError
from keel.workflows import AgentWorkflow
from keel.workflows.budgets import extended
from keel.workflows.contracts import (
    PLAN_RUNNER,
    ActingPolicy,
    AgentRunInput,
    AgentSpec,
    ApprovalPolicy,
    ArgRule,
    Budget,
    Decision,
    Grant,
    PlanSpec,
    RunReport,
    StepSpec,
    StepState,
)
from tests import sample_tools
from tests.conftest import dev_address, history_holds, keel_worker
from tests.processes import WorkerProcess, starter
from tests.test_agent_workflow import run_plan as run_given_plan
from tests.test_approvals import asked, pay, start, waiting

CATALOG = Catalog.from_modules([ledger, sample_tools])
STATEMENT = CATALOG.tools["write_statement"].spec


async def run_plan(
    client: Client, catalog: Catalog, agent: AgentSpec, steps: list[StepSpec]
) -> RunReport:
    plan = PlanSpec(goal="attack", steps=steps, unverified_ok=True)
    async with keel_worker(client, catalog) as queue:
        return await run_given_plan(client, queue, plan, agent, prefix="attack-")


# --- item 2: path traversal through grant globs ---------------------------------------------


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        (".keel/out/statement.json", True),
        (".keel/out/./statement.json", True),
        (".keel/out//statement.json", True),
        (".keel/out/../../../anywhere", False),
        (".keel/out/../secret.json", False),
        (".keel/out/sub/statement.json", False),  # `*` stops at a separator
        (".keel/out\\..\\..\\anywhere", False),
        (".keel/out/*", True),  # a literal star: matched as text, it widens nothing
        (".keel/outside.json", False),
    ],
)
def test_a_grant_glob_never_crosses_a_directory_or_climbs_out(path: str, allowed: bool) -> None:
    grants = (Grant(scope="fs:write:.keel/out/*"),)
    denied = authorize(STATEMENT, {"path": path}, grants)
    assert (denied is None) == allowed, denied


def test_double_star_crosses_directories_and_metacharacters_in_values_are_literal() -> None:
    assert grant_covers("fs:write:.keel/out/**", "fs:write:.keel/out/a/b/c.json")
    assert not grant_covers("fs:write:.keel/out/*", "fs:write:.keel/out/a/b.json")
    assert not grant_covers("ledger:write:a?c", "ledger:write:a/c")
    # A value that looks like a pattern is text: "[a-z]" matches only itself.
    assert not grant_covers("ledger:write:[a-z]", "ledger:write:b")
    assert grant_covers("ledger:write:[a-z]", "ledger:write:[a-z]")


async def test_a_traversing_path_is_denied_before_the_tool_runs(
    ts_client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    writer = AgentSpec(name="statement-writer", grants=(Grant(scope="fs:write:.keel/out/*"),))
    target = ".keel/out/../../escaped.json"
    step = StepSpec(title="escape", tool="write_statement", args={"path": target})
    report = await run_plan(ts_client, CATALOG.including(writer), writer, [step])
    assert report.status == "NOT_DONE" and "climbs out of its directory" in report.reason
    assert not (tmp_path.parent / "escaped.json").exists()
    assert [a.action for a in report.audit] == ["denied"]


# --- item 5: the worker is the authority on agents --------------------------------------------

GATED = AgentSpec(
    name="gated-clerk",
    tools=("post_entry",),
    approvals={"post_entry": ApprovalPolicy(rules=(ArgRule(arg="amount", op=">", value=100),))},
    grants=(Grant(scope="ledger:write:*"),),
    budget=Budget(max_tool_calls=10),
)


async def test_a_client_redefining_an_agent_gets_the_workers_definition(
    ts_client: Client, ledger_db: Path
) -> None:
    forged = GATED.model_copy(
        update={"approvals": {}, "grants": (Grant(scope="**"),), "budget": Budget()}
    )
    plan = PlanSpec(
        goal="pay big",
        steps=[StepSpec(title="pay", tool="post_entry", args={"account": "z", "amount": 500})],
    )
    async with keel_worker(ts_client, CATALOG, GATED) as queue:
        handle = await ts_client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=forged, goal=plan.goal, plan=plan),
            id=f"attack-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        report = await waiting(handle)  # the worker's gate holds, whatever the client said
        assert report.pending is not None and report.pending.tool == "post_entry"
        assert report.budget.max_tool_calls == 10
        await handle.cancel()
        assert (await outcome(handle)).status == "NOT_DONE"
    assert store.balances() == {}


async def test_an_agent_the_worker_does_not_serve_is_refused(ts_client: Client) -> None:
    stranger = AgentSpec(name="stranger", grants=(Grant(scope="**"),))
    step = StepSpec(title="read", tool="get_balance", args={"account": "a"})
    report = await run_plan(ts_client, CATALOG, stranger, [step])
    assert report.status == "NOT_DONE"
    assert "agent refused: unknown agent 'stranger'" in report.reason
    assert report.steps == []


def test_a_client_may_narrow_limits_never_widen_them() -> None:
    catalog = CATALOG.including(GATED.model_copy(update={"loop": ActingPolicy(max_turns=80)}))
    lower = AgentSpec(
        name="gated-clerk", budget=Budget(max_tool_calls=3), loop=ActingPolicy(max_turns=20)
    )
    higher = AgentSpec(
        name="gated-clerk",
        budget=Budget(max_tool_calls=99, max_cost=1.0),
        grants=(Grant(scope="**"),),
    )
    narrowed = catalog.resolve(lower)
    assert (narrowed.budget.max_tool_calls, narrowed.loop.max_turns) == (3, 20)
    widened = catalog.resolve(higher)
    assert widened.budget.max_tool_calls == 10 and widened.budget.max_cost == 1.0
    assert widened.grants == GATED.grants and widened.approvals == GATED.approvals
    assert catalog.resolve(AgentSpec(name="plan")) == PLAN_RUNNER
    with pytest.raises(CatalogError, match="Keel's own"):
        Catalog.of([AgentSpec(name="plan", grants=(Grant(scope="**"),))])


# --- items 3 and 11: a secret of any length never leaves the worker ----------------------------

PIN = "pZq"  # three characters: short secrets are secrets too


async def test_a_short_secret_in_a_touched_path_is_redacted_from_report_and_history(
    ts_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_TEST_PIN", PIN)
    step = StepSpec(
        title="unlock", tool="careless_with_pin", args={"pin": {"secret": "KEEL_TEST_PIN"}}
    )
    report = await run_plan(ts_client, CATALOG, PLAN_RUNNER, [step])
    assert report.files_touched == ["out/[redacted].txt"]
    assert report.steps[0].result == "unlocked with [redacted]"
    history = await ts_client.get_workflow_handle(report.run_id).fetch_history()
    assert history_holds(history, "KEEL_TEST_PIN")  # the reference travels (the check sees it)
    assert not history_holds(history, PIN)  # the value does not, payloads included
    assert PIN not in report.model_dump_json()


async def test_a_secret_a_tool_logs_or_prints_is_redacted_in_the_worker_log(
    dev_client: Client, tmp_path: Path
) -> None:
    env = {
        "TEMPORAL_ADDRESS": dev_address(dev_client),
        "KEEL_TEST_PIN": PIN,
        "KEEL_STORE_DIR": str(tmp_path / "blobs"),
    }
    log = tmp_path / "worker.log"
    queue = f"attack-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(
        env, log, "--log-format", "json", "--task-queue", queue, "--tools", "tests/sample_tools.py"
    )
    await worker.start()
    try:
        plan = tmp_path / "plan.json"
        plan.write_text(
            json.dumps(
                {
                    "goal": "unlock",
                    "steps": [
                        {
                            "title": "unlock",
                            "tool": "careless_with_pin",
                            "args": {"pin": {"secret": "KEEL_TEST_PIN"}},
                        }
                    ],
                }
            )
        )
        done = await starter(
            "run",
            "--plan",
            str(plan),
            "--task-queue",
            queue,
            "--wait",
            "--json",
            env=env,
        )
        assert json.loads(done.out)["steps"][0]["done"], done
    finally:
        await worker.stop()
    text = log.read_text()
    assert "unlocking with [redacted]" in text and "the pin is [redacted]" in text
    assert PIN not in text


# --- item 7: a decision's time is when the server took it, not when a worker saw it ----------


QUICK_GATE = AgentSpec(
    name="quick-gate",
    approvals={
        "post_entry": ApprovalPolicy(
            rules=(ArgRule(arg="amount", op=">", value=100),), timeout=timedelta(seconds=3)
        )
    },
    grants=(Grant(scope="ledger:*"),),
)


async def test_a_signal_sent_in_time_is_taken_when_the_worker_returns_after_the_deadline(
    dev_client: Client, ledger_db: Path
) -> None:
    queue = f"late-{uuid.uuid4().hex[:8]}"
    catalog = CATALOG.including(QUICK_GATE)
    async with Worker(dev_client, task_queue=queue, plugins=[KeelPlugin(catalog)]):
        handle = await start(dev_client, queue, [pay("hal", 500)], QUICK_GATE)
        pending = await asked(handle)
    # No worker runs: the server takes the decision before the deadline and holds it.
    decision = Decision(request_id=pending.request_id, choice="approve", approver="ann")
    await handle.signal(AgentWorkflow.decide_signal, decision)
    await asyncio.sleep(max(0.0, (pending.deadline - datetime.now(UTC)).total_seconds()) + 1.5)
    async with Worker(dev_client, task_queue=queue, plugins=[KeelPlugin(catalog)]):
        final = await outcome(handle)
    assert [(d.choice, d.approver) for d in final.decisions] == [("approve", "ann")]
    assert final.status == "DONE", final.reason
    assert store.balances() == {"hal": 500}


async def test_a_refused_signal_decision_is_audited(ts_client: Client, ledger_db: Path) -> None:
    async with keel_worker(ts_client, CATALOG, QUICK_GATE) as queue:
        handle = await start(ts_client, queue, [pay("ivy", 500)], QUICK_GATE)
        await waiting(handle)
        forged = Decision(request_id="approval-9-9", choice="approve", approver="mallory")
        await handle.signal(AgentWorkflow.decide_signal, forged)
        report = await handle.query(AgentWorkflow.report)
        for _ in range(200):
            report = await handle.query(AgentWorkflow.report)
            if any(e.action == "decision_refused" for e in report.audit):
                break
            await asyncio.sleep(0.025)
        await handle.cancel()
    refusal = next(e for e in report.audit if e.action == "decision_refused")
    assert (refusal.actor, refusal.target, refusal.outcome) == (
        "mallory",
        "approval-9-9",
        "refused",
    )
    assert "unknown request 'approval-9-9'" in refusal.detail
    assert report.pending is not None and report.decisions == []  # nothing changed


# --- item 8: the blob store does not trust its contents ----------------------------------------


def test_a_tampered_blob_is_refused_loudly(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    ref = store.put(b"the real context")
    store.path_of(ref).write_bytes(b"a forged context")
    with pytest.raises(BlobCorrupted, match="does not match its hash"):
        store.get(ref)


async def test_a_run_whose_context_was_tampered_with_stops_and_compensates(
    ts_client: Client, ledger_db: Path
) -> None:
    async with keel_worker(ts_client, CATALOG) as queue:
        handle = await ts_client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=ledger.ledger_agent, goal="Pay ann 3 and zed 500"),
            id=f"attack-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        await waiting(handle)  # ann is paid; zed's 500 waits for approval
        for blob in (ledger_db.parent / "blobs").rglob("*"):
            if blob.is_file() and "pins" not in blob.parts:
                blob.write_bytes(b'{"messages": [], "parent": null}')  # a forged link
        context_store._conversations.clear()  # a worker that must read the store again
        context_store._preambles.clear()
        await decide(ts_client, handle.id, choice="approve", approver="ops")
        report = await outcome(handle)
    assert report.status == "NOT_DONE" and "does not match its hash" in report.reason
    assert sorted(c.step for c in report.compensations if c.status == "done") == [1, 2]
    assert store.balances() == {"ann": 0, "zed": 0}


# --- item 12: a budget extension can raise a limit, never remove it ----------------------------


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"max_tool_calls": None}, "cannot be removed"),
        ({"max_cost": float("inf")}, "finite number"),
        ({"max_cost": float("nan")}, "finite number"),
        ({"max_cost": "Infinity"}, "finite number"),
        ({"max_tool_calls": 0}, "can only be raised"),
        ({"max_steps": 10}, "no limit to extend"),
        ({"max_turns": 10}, "is not a limit"),
    ],
)
def test_an_extension_that_would_lift_a_limit_is_refused(changes: dict, why: str) -> None:
    with pytest.raises(ApplicationError, match=why):
        extended(Budget(max_tool_calls=1, max_cost=0.5), changes)


async def test_a_run_refuses_an_unlimited_extension_and_takes_a_finite_one(
    ts_client: Client, ledger_db: Path
) -> None:
    agent = ledger.ledger_agent.model_copy(
        update={"name": "budgeted", "budget": Budget(max_tool_calls=1), "on_budget": "ask"}
    )
    async with keel_worker(ts_client, CATALOG, agent) as queue:
        handle = await ts_client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=agent, goal="Pay ann 3 and bo 4"),
            id=f"attack-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        pending = (await waiting(handle)).pending
        assert pending is not None and pending.choices == ["extend", "abort"]
        for limit in (None, float("inf"), float("nan")):
            with pytest.raises(WorkflowUpdateFailedError):
                await handle.execute_update(
                    AgentWorkflow.decide,
                    Decision(
                        request_id=pending.request_id,
                        choice="extend",
                        args={"max_tool_calls": limit},
                    ),
                )
        assert (await handle.query(AgentWorkflow.report)).budget.max_tool_calls == 1
        await decide(ts_client, handle.id, choice="extend", args={"max_tool_calls": 2})
        report = await outcome(handle)
    assert report.status == "DONE" and report.budget.max_tool_calls == 2


# --- item 6: every payload the run produces fits ----------------------------------------------

BIG_MEMO = "x" * 200_000


async def test_a_plan_whose_arguments_outgrow_a_payload_is_refused_before_any_write(
    ts_client: Client, ledger_db: Path
) -> None:
    steps = [
        StepSpec(
            title=f"pay {i}",
            tool="post_entry",
            args={"account": f"a{i}", "amount": 1, "memo": BIG_MEMO},
        )
        for i in range(8)
    ]
    report = await run_plan(ts_client, CATALOG, PLAN_RUNNER, steps)
    assert report.status == "NOT_DONE"
    assert "the plan's arguments are" in report.reason and "in all, over the" in report.reason
    assert store.balances() == {}


async def test_edited_arguments_get_the_same_size_check(ts_client: Client, ledger_db: Path) -> None:
    async with keel_worker(ts_client, CATALOG, GATED) as queue:
        handle = await start(ts_client, queue, [pay("z", 500)], GATED)
        pending = await asked(handle)
        huge = {"account": "z", "amount": 5, "memo": "y" * 300_000}
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                AgentWorkflow.decide,
                Decision(request_id=pending.request_id, choice="edit", args=huge),
            )
        assert "over the 262144 limit" in str(refused.value.cause)
        await handle.cancel()
        assert (await outcome(handle)).status == "NOT_DONE"
    assert store.balances() == {}


def test_a_report_over_the_limit_is_slimmed_and_one_that_cannot_fit_is_refused() -> None:
    def step(i: int, done: bool) -> StepState:
        return StepState(index=i, title="t", tool="post_entry", args={"m": BIG_MEMO}, done=done)

    settled = RunReport(run_id="r", agent="a", goal="g", steps=[step(i, True) for i in range(10)])
    assert json_size(settled) > PAYLOAD_LIMIT
    fitted = fit(settled, keep_saga=False)
    assert fitted is not None and json_size(fitted) <= PAYLOAD_LIMIT
    assert fitted.steps[0].args == {
        "omitted": "[200008 bytes: too large to keep in the run's state]"
    }
    waiting_steps = settled.model_copy(update={"steps": [step(i, False) for i in range(10)]})
    assert fit(waiting_steps, keep_saga=False) is None  # steps still to run keep their arguments


# --- retries get jitter ------------------------------------------------------------------------


def test_retry_delays_are_jittered_within_bounds_and_end_with_the_policy() -> None:
    policy = RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2,
        maximum_interval=timedelta(seconds=5),
        maximum_attempts=6,
    )
    rng = random.Random(7)
    for attempt, base in [(1, 1), (2, 2), (3, 4), (4, 5), (5, 5)]:  # capped at 5 s
        delays = [jittered_delay(attempt, policy, rng) for _ in range(50)]
        seconds = [d.total_seconds() for d in delays if d is not None]
        assert len(seconds) == 50
        assert all(base * (1 - JITTER) <= s <= base * (1 + JITTER) for s in seconds)
        assert max(seconds) - min(seconds) > base * JITTER  # spread, not lockstep
    assert jittered_delay(6, policy, rng) is None  # the last attempt has no next one


async def test_a_failing_tool_asks_for_a_jittered_retry_delay(
    dev_client: Client, ledger_db: Path
) -> None:
    label = f"jitter-{uuid.uuid4().hex[:6]}"
    step = StepSpec(title="flaky", tool="flaky", args={"label": label, "fail_times": 2})
    report = await run_plan(dev_client, CATALOG, PLAN_RUNNER, [step])
    assert report.status == "DONE" and report.steps[0].attempts == 3
    times = sample_tools.ATTEMPT_TIMES[f"flaky:{label}"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # flaky's policy: 1 s then 2 s, each within +-25 % (generous slack above for a busy host)
    assert 0.75 <= gaps[0] <= 1.25 + 1.5 and 1.5 <= gaps[1] <= 2.5 + 1.5, gaps
