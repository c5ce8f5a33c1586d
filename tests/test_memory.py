"""Memory for agents (issue 18): the Seattle/Portland scenario through runs and the CLI,
episodes one run leaves for the next, a contest settled by a human, a SIGKILL between the
store's write and the call's completion, and the consolidator agent. The store's own rules
are tested on SQLite and PostgreSQL in test_memory_store.py."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from examples import ledger
from keel.activities.catalog import Catalog
from keel.activities.memory.store import SqliteMemory
from keel.runs import outcome
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import (
    AgentRunInput,
    Grant,
    MemoryPolicy,
    PlanSpec,
    PredicateSpec,
    RunReport,
    StepSpec,
)
from keel.workflows.contracts.memory import Assertion
from tests.conftest import dev_address, keel_worker, start_plan, wait_until
from tests.model_server import ModelServer, openai_call
from tests.processes import WorkerProcess, starter, worker_env
from tests.test_models import KEY, KEY_ENV, clerk, openai_ref

CATALOG = Catalog.from_modules([ledger])


@pytest.fixture
def memory_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "memory.db"
    monkeypatch.setenv("KEEL_MEMORY_URL", f"sqlite:///{path}")
    monkeypatch.setenv(KEY_ENV, KEY)
    return path


async def run_agent(client: Client, queue: str, agent: str, goal: str) -> RunReport:
    handle = await client.start_workflow(
        AgentWorkflow.run,
        AgentRunInput(agent=clerk(name=agent), goal=goal),
        id=f"mem-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
    )
    return await outcome(handle)


async def test_a_user_moves_only_the_new_city_is_current_and_the_next_run_knows_it(
    dev_client: Client, tmp_path: Path, memory_db: Path
) -> None:
    user = f"user:{uuid.uuid4().hex[:6]}"
    replies = [
        openai_call(
            "remember",
            scope=user,
            subject="ann",
            predicate="lives_in",
            value="Seattle",
            valid_from="2020-01-01T00:00:00Z",
        ),
        openai_call("finish", summary="noted the first city"),
        openai_call(
            "remember",
            scope=user,
            subject="ann",
            predicate="lives_in",
            value="Portland",
            valid_from="2024-06-01T00:00:00Z",
        ),
        openai_call("finish", summary="noted the move"),
        openai_call("finish", summary="Ann lives in Portland"),
    ]
    with ModelServer() as server:
        server.script("/openai/v1/chat/completions", replies)
        agent = clerk(
            openai_ref(server),
            name="rememberer",
            tools=("remember", "recall"),
            grants=(Grant(scope=f"memory:*:{user}"),),
            memory=MemoryPolicy(scope=user, predicates={"lives_in": PredicateSpec()}),
        )
        async with keel_worker(dev_client, CATALOG, agent) as queue:
            first = await run_agent(dev_client, queue, "rememberer", "Ann lives in Seattle")
            second = await run_agent(dev_client, queue, "rememberer", "Ann moved to Portland")
            third = await run_agent(dev_client, queue, "rememberer", "Where does Ann live?")
        asked = [json.dumps(seen.body) for seen in server.seen]
    assert [r.status for r in (first, second, third)] == ["DONE"] * 3
    # The first run started cold; the second opened with Seattle and the first's episode.
    assert "What you remember" not in asked[0]
    assert "Seattle" in asked[2] and first.run_id in asked[2] and "noted the first city" in asked[2]
    # The third opens with what is remembered now: Portland only, and both episodes.
    opening = asked[4]
    assert "Portland" in opening and "Seattle" not in opening
    assert second.run_id in opening and "noted the move" in opening
    env = {"KEEL_MEMORY_URL": f"sqlite:///{memory_db}"}
    now = json.loads((await starter("memory", "recall", user, "ann", "--json", env=env)).out)
    assert [f["value"] for f in now] == ["Portland"]
    history = await starter("memory", "history", user, "ann", "lives_in", env=env)
    assert history.out.count("Seattle") == 2 and history.out.count("Portland") == 1
    before = await starter("memory", "recall", user, "ann", "--as-of", "2023-01-01", env=env)
    assert "Seattle" in before.out and "Portland" not in before.out
    bad = await starter("memory", "recall", user, "--as-of", "last tuesday", env=env)
    assert bad.code == 2 and len(bad.err.strip().splitlines()) == 1, bad


async def test_a_contested_fact_is_settled_by_a_human(tmp_path: Path, memory_db: Path) -> None:
    store = SqliteMemory(memory_db)
    user = "user:cleo"
    for city in ("Lyon", "Nice"):
        store.remember(
            Assertion(
                scope=user,
                subject="cleo",
                predicate="lives_in",
                value=city,
                valid_from=datetime(2025, 1, 1, tzinfo=UTC),
            )
        )
    env = {"KEEL_MEMORY_URL": f"sqlite:///{memory_db}"}
    listed = json.loads((await starter("memory", "contested", "--json", env=env)).out)
    assert sorted(f["value"] for f in listed) == ["Lyon", "Nice"]
    nice = next(f["id"] for f in listed if f["value"] == "Nice")
    settled = await starter(
        "memory", "resolve", nice, "--reason", "she told me", "--by", "ops", env=env
    )
    assert settled.code == 0 and nice in settled.out, settled
    now = json.loads((await starter("memory", "recall", user, "cleo", "--json", env=env)).out)
    assert [(f["value"], f["contested"]) for f in now] == [("Nice", False)]
    again = await starter("memory", "resolve", nice, env=env)
    assert again.code == 1 and "not contested" in again.err and len(again.err.splitlines()) == 1
    lyon = store.history(user, "cleo", "lives_in")[0]
    assert lyon.value == "Lyon" and lyon.note == f"resolved for {nice} by human:ops: she told me"


async def test_a_sigkill_between_the_write_and_its_completion_records_the_fact_once(
    dev_client: Client, tmp_path: Path
) -> None:
    db, gate = tmp_path / "memory.db", tmp_path / "gate"
    env = worker_env(
        dev_address(dev_client),
        tmp_path,
        KEEL_MEMORY_URL=f"sqlite:///{db}",
        KEEL_TEST_GATE_FILE=str(gate),
    )
    queue = f"mem-crash-{uuid.uuid4().hex[:6]}"
    args = ("--task-queue", queue, "--tools", "tests.sample_tools")
    first = WorkerProcess(env, tmp_path / "worker1.log", *args)
    second = WorkerProcess(env, tmp_path / "worker2.log", *args)
    fact = {"scope": "user:dan", "subject": "dan", "predicate": "lives_in", "value": "Paris"}
    plan = PlanSpec(
        goal="remember Paris",
        steps=[StepSpec(title="remember", tool="remember_then_hold", args=fact)],
        unverified_ok=True,
    )
    await first.start()
    try:
        handle = await start_plan(dev_client, queue, plan, "mem-crash")

        async def fact_written() -> bool:
            return db.exists() and SqliteMemory(db).count() == 1

        await wait_until(fact_written)
        await first.kill()  # written, not reported: the call will run again
        gate.touch()
        await second.start()
        report = await outcome(handle)
    finally:
        await first.stop()
        await second.stop()
    assert report.status == "DONE", report.reason
    assert report.steps[0].attempts == 2  # the killed attempt, and the one that completed
    store = SqliteMemory(db)
    assert store.count() == 1  # the retry found the fact by its key: recorded once
    (kept,) = store.history("user:dan", "dan", "lives_in")
    assert kept.value == "Paris" and kept.source == f"{report.run_id}:1"
    assert report.steps[0].result["fact"]["id"] == kept.id


async def test_the_consolidator_expires_merges_and_condenses_and_notes_what_it_did(
    dev_client: Client, memory_db: Path
) -> None:
    store = SqliteMemory(memory_db)
    scope = f"agent:{uuid.uuid4().hex[:6]}"
    hour_ago = time.time() - 3600
    store.remember(
        Assertion(
            scope=scope,
            subject="cache",
            predicate="warm",
            value=True,
            rule=PredicateSpec(ttl=timedelta(minutes=1)),
        ),
        now=hour_ago,
    )
    many = PredicateSpec(multi=True)
    for name in ("Ann Lee", "ann  lee"):
        store.remember(
            Assertion(scope=scope, subject="team", predicate="member", value=name, rule=many)
        )
    for n in range(8):
        store.remember(
            Assertion(
                scope=scope,
                subject="runs",
                predicate="episode",
                value={"run_id": f"r{n}", "status": "DONE", "summary": f"did {n}"},
                valid_from=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=n),
                rule=many,
            )
        )
    async with keel_worker(dev_client, CATALOG) as queue:
        handle = await dev_client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=clerk(name="memory-consolidator"), goal=f"consolidate {scope}"),
            id=f"sleep-{uuid.uuid4().hex[:6]}",
            task_queue=queue,
        )
        report = await outcome(handle)
    assert report.status == "DONE", report.reason
    results: list[Any] = [s.result for s in report.steps]
    assert results == [{"expired": 1}, {"merged": 1}, {"condensed": 3}]
    assert store.recall(scope, "cache", include_expired=True) == []  # superseded, not erased
    assert len(store.history(scope, "cache", "warm")) == 1
    assert len(store.recall(scope, "team", "member")) == 1
    episodes = sorted(store.recall(scope, "runs", "episode"), key=lambda f: f.valid_from)
    assert len(episodes) == 6 and episodes[0].value["run_id"] == "3 runs"
    changes = {f.predicate for f in store.recall(f"meta:{scope}", limit=100)}
    assert changes == {"expired", "merged_into", "condensed_into"}
