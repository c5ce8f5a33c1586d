"""The model layer against a real local HTTP server speaking both APIs: tool-calling
conversations, 429s, 5xx until fallback, timeouts, malformed answers and a runaway model that
the budget stops. The model's answers are scripted; HTTP, adapters and Temporal are real."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError
from temporalio.client import Client, WorkflowUpdateFailedError

import examples.ledger as ledger
import keel
from examples.ledger import store
from keel.activities import Catalog
from keel.activities.models import context_store
from keel.activities.models.context_store import Version
from keel.runs import outcome
from keel.shared.context_view import model_view, results_seen
from keel.shared.errors import CatalogError
from keel.timeline import timeline
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import (
    AcceptanceSpec,
    ActingPolicy,
    AgentRunInput,
    AgentSpec,
    Budget,
    Decision,
    Grant,
    Message,
    ModelRef,
    ModelReply,
    ModelRequest,
    RetrySpec,
    Route,
    Routes,
    RunReport,
    ToolCall,
    ToolCallRequest,
    ToolOutput,
    preamble_ref,
)
from keel.workflows.loop import REPEATS_CARRIED, recent_repeats
from tests.conftest import dev_address, history_holds, keel_worker
from tests.model_server import (
    ANTHROPIC,
    OPENAI,
    ModelServer,
    Reply,
    anthropic_call,
    openai_call,
    openai_calls,
    openai_text,
)

CATALOG = Catalog.from_modules([ledger])
KEY_ENV = "KEEL_TEST_MODEL_KEY"
KEY = f"sk-test-{uuid.uuid4().hex}"  # scanned for in every history and log line at the end
FAST = RetrySpec(max_attempts=2, initial_interval=timedelta(milliseconds=100))
RUN_IDS: list[str] = []


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


LOGS = Collect()


@pytest.fixture(autouse=True)
def model_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(KEY_ENV, KEY)
    root = logging.getLogger()
    level = root.level
    root.addHandler(LOGS)
    root.setLevel(logging.DEBUG)  # every line any library writes, for the scan at the end
    yield
    root.removeHandler(LOGS)
    root.setLevel(level)


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer() as s:
        yield s


def openai_ref(server: ModelServer, **extra: Any) -> ModelRef:
    settings: dict[str, Any] = {
        "provider": "openai",
        "model": "gpt-test",
        "base_url": server.url + "/openai/v1",
        "api_key_env": KEY_ENV,
        "retry": FAST,
        "input_price": 2.0,
        "output_price": 8.0,
    } | extra
    return ModelRef(**settings)


def anthropic_ref(server: ModelServer, **extra: Any) -> ModelRef:
    settings: dict[str, Any] = {
        "provider": "anthropic",
        "model": "claude-test",
        "base_url": server.url + "/anthropic",
        "api_key_env": KEY_ENV,
        "retry": FAST,
        "input_price": 3.0,
        "output_price": 15.0,
    } | extra
    return ModelRef(**settings)


def clerk(*models: ModelRef, **extra: Any) -> AgentSpec:
    settings: dict[str, Any] = {
        "name": "loop-clerk",
        "tools": ("get_balance", "post_entry"),
        "grants": (Grant(scope="ledger:*"),),
        "unverified_ok": True,  # tests of the loop; verification has tests of its own
    } | extra
    if models:
        settings.setdefault("routes", Routes(act=Route(models=models)))
    return AgentSpec(**settings)


async def run_agent(client: Client, agent: AgentSpec, goal: str = "pay ann 5") -> RunReport:
    async with keel_worker(client, CATALOG, agent) as queue:
        run_id = f"model-{uuid.uuid4().hex[:8]}"
        RUN_IDS.append(run_id)
        return await outcome(
            await client.start_workflow(
                AgentWorkflow.run,
                AgentRunInput(agent=agent, goal=goal),
                id=run_id,
                task_queue=queue,
            )
        )


def tool_messages(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


async def test_openai_tool_calling_conversation(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    server.script(
        OPENAI,
        [
            openai_call("get_balance", account="ann"),
            openai_call("post_entry", account="ann", amount=5),
            openai_call("finish", summary="paid ann 5"),
        ],
    )
    accept = AcceptanceSpec(
        criterion="ann got 5", check="run_posted", args={"account": "ann", "expected": 5}
    )
    report = await run_agent(
        ts_client, clerk(openai_ref(server), acceptance=(accept,), prompt="You are a clerk.")
    )
    assert report.status == "DONE", report.reason
    assert report.verified and report.summary == "paid ann 5"
    assert [(s.tool, s.args, s.done) for s in report.steps] == [
        ("get_balance", {"account": "ann"}, True),
        ("post_entry", {"account": "ann", "amount": 5}, True),
    ]
    assert store.balances() == {"ann": 5}
    assert (report.used.model_calls, report.used.tool_calls) == (3, 2)
    assert (report.used.input_tokens, report.used.output_tokens) == (300, 60)
    assert report.used.cost == pytest.approx(3 * (100 * 2.0 + 20 * 8.0) / 1e6)
    assert [c.model for c in report.model_calls] == ["openai:gpt-test"] * 3

    seen = server.requests(OPENAI)
    assert all(s.headers["authorization"] == f"Bearer {KEY}" for s in seen)
    first = seen[0].body
    assert first["model"] == "gpt-test" and first["max_tokens"] == 1024
    assert first["messages"][0]["role"] == "system"
    assert first["messages"][0]["content"].startswith("You are a clerk.")
    assert first["messages"][1] == {"role": "user", "content": "pay ann 5"}
    names = [t["function"]["name"] for t in first["tools"]]
    assert names == ["get_balance", "post_entry", "finish", "ask_human"]
    third = seen[2].body
    assert tool_messages(third) == ["0", json.dumps(report.steps[1].result)]
    calls = [m for m in third["messages"] if m.get("tool_calls")]
    assert [m["tool_calls"][0]["function"]["name"] for m in calls] == ["get_balance", "post_entry"]
    # The provider sees the system prompt and the tools on every call; the history holds them
    # once: later calls carry only their reference.
    assert third["messages"][0]["content"].startswith("You are a clerk.")
    assert [t["function"]["name"] for t in third["tools"]] == names
    history = await ts_client.get_workflow_handle(report.run_id).fetch_history()
    inputs = [
        json.loads(e.activity_task_scheduled_event_attributes.input.payloads[0].data)
        for e in history.events
        if e.activity_task_scheduled_event_attributes.activity_type.name == "keel.model_call"
    ]
    assert [len(i.get("tools", ())) for i in inputs] == [4, 0, 0]
    assert inputs[0]["system"].startswith("You are a clerk.") and "system" not in inputs[2]
    # What does not change from call to call travels once: later calls name only their context
    # (whose link in the store records the model, the policy and the preamble).
    assert inputs[0]["preamble_ref"].startswith("sha256:") and inputs[0]["model"]["model"]
    assert all(not {"preamble_ref", "model", "policy"} & set(i) for i in inputs[1:]), [
        sorted(i) for i in inputs
    ]


async def test_anthropic_tool_use_conversation(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    server.script(
        ANTHROPIC,
        [
            anthropic_call("post_entry", account="bea", amount=7),
            anthropic_call("finish", summary="paid bea 7"),
        ],
    )
    report = await run_agent(
        ts_client, clerk(anthropic_ref(server, reasoning_effort="low")), goal="pay bea 7"
    )
    assert report.status == "DONE", report.reason
    assert store.balances() == {"bea": 7}
    assert report.used.cost == pytest.approx(2 * (80 * 3.0 + 15 * 15.0) / 1e6)
    seen = server.requests(ANTHROPIC)
    assert all(s.headers["x-api-key"] == KEY for s in seen)
    assert all(s.headers["anthropic-version"] == "2023-06-01" for s in seen)
    first, second = seen[0].body, seen[1].body
    assert first["system"].startswith("Goal: pay bea 7")
    assert first["messages"] == [{"role": "user", "content": "pay bea 7"}]
    assert first["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert [t["name"] for t in first["tools"]][-2:] == ["finish", "ask_human"]
    assert "input_schema" in first["tools"][0]
    assistant, results = second["messages"][1], second["messages"][2]
    assert [b["type"] for b in assistant["content"]] == ["text", "tool_use"]
    use = assistant["content"][1]
    assert (use["name"], use["input"]) == ("post_entry", {"account": "bea", "amount": 7})
    assert results["role"] == "user"
    assert results["content"][0]["type"] == "tool_result"
    assert results["content"][0]["tool_use_id"] == use["id"]


async def test_429_then_success_stays_on_the_same_model(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    server.script(
        OPENAI,
        [
            Reply(429, {"error": "slow down"}, headers={"retry-after": "0"}),
            Reply(200, "<html>proxy error</html>"),  # not JSON: retried like a 5xx
            openai_call("finish", summary="nothing to do"),
        ],
    )
    patient = openai_ref(
        server, retry=RetrySpec(max_attempts=3, initial_interval=FAST.initial_interval)
    )
    report = await run_agent(ts_client, clerk(patient, anthropic_ref(server)))
    assert report.status == "DONE", report.reason
    assert len(server.requests(OPENAI)) == 3 and not server.requests(ANTHROPIC)
    assert report.model_calls[0].fallbacks == []


async def test_5xx_until_fallback_then_timeout_fallback(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    # First model: 500 on every attempt (2). Second: slower than its timeout. Third answers.
    server.script(OPENAI, lambda body: Reply(500, {"error": "overloaded"}))
    server.script(ANTHROPIC, lambda body: Reply(delay=2.0, body={}))
    local = openai_ref(server, model="local-llm", base_url=server.url + "/local/v1")
    server.script("/local/v1/chat/completions", [openai_call("finish", summary="ok")])
    report = await run_agent(
        ts_client,
        clerk(
            openai_ref(server),
            anthropic_ref(server, timeout=timedelta(seconds=0.5), retry=RetrySpec(max_attempts=1)),
            local,
        ),
    )
    assert report.status == "DONE", report.reason
    assert len(server.requests(OPENAI)) == 2  # exactly its max attempts, never more
    assert len(server.requests(ANTHROPIC)) == 1
    fallbacks = report.model_calls[0].fallbacks
    assert report.model_calls[0].model == "openai:local-llm"
    assert fallbacks[0].startswith("openai:gpt-test: ModelUnavailable: openai:gpt-test: HTTP 500")
    assert fallbacks[1] == (
        "anthropic:claude-test: ModelUnavailable: anthropic:claude-test: no answer within 0.5 s"
    )


async def test_every_model_failing_ends_not_done_naming_each(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    server.script(OPENAI, lambda body: Reply(401, {"error": "bad key"}))
    nowhere = openai_ref(server, model="gone", base_url="http://127.0.0.1:9/v1")
    report = await run_agent(ts_client, clerk(nowhere, openai_ref(server)))
    assert report.status == "NOT_DONE"
    assert report.reason == (
        "every model of the route gave up: openai:gone: ModelUnavailable: openai:gone: cannot "
        "reach http://127.0.0.1:9/v1/chat/completions: ConnectError; openai:gpt-test: "
        'ModelRequestRejected: openai:gpt-test: HTTP 401: {"error": "bad key"}'
    )
    assert len(server.requests(OPENAI)) == 1  # a rejected request is not retried


async def test_malformed_answers_are_fed_back_then_the_run_goes_on(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    server.script(
        OPENAI,
        [
            openai_text("I think I should pay ann."),
            openai_call("transfer_all", to="me"),
            openai_calls(("post_entry", '{"account": "ann", "amount": ')),
            openai_call("post_entry", account="ann", amount="five"),
            openai_call("post_entry", account="ann", amount=5),
            openai_call("finish", summary="done"),
        ],
    )
    report = await run_agent(ts_client, clerk(openai_ref(server), budget=Budget(max_malformed=4)))
    assert report.status == "DONE", report.reason
    assert [s.args for s in report.steps] == [{"account": "ann", "amount": 5}]  # one real call
    assert store.balances() == {"ann": 5}
    seen = [s.body for s in server.requests(OPENAI)]
    assert seen[1]["messages"][-1] == {
        "role": "user",
        "content": "Answer with a tool call. Call finish with a summary when the goal is met.",
    }
    assert tool_messages(seen[2])[-1].startswith("unknown tool 'transfer_all'; the tools are: ")
    assert tool_messages(seen[3])[-1].startswith("arguments of post_entry are not JSON")
    assert tool_messages(seen[4])[-1] == (
        "invalid arguments for post_entry: argument 'amount' must be integer"
    )


async def test_a_model_that_keeps_answering_badly_stops(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    server.script(OPENAI, lambda body: openai_text("no"))
    report = await run_agent(ts_client, clerk(openai_ref(server), budget=Budget(max_malformed=2)))
    assert report.status == "NOT_DONE"
    assert report.reason.startswith("the model answered malformed 3 times in a row")
    assert len(server.requests(OPENAI)) == 3


def runaway(body: dict[str, Any]) -> Reply:
    """A model that never finishes: one more payment every turn."""
    turn = sum(1 for m in body["messages"] if m["role"] == "tool") + 1
    return openai_call("post_entry", account="cy", amount=turn)


async def test_runaway_model_stops_at_the_tool_budget_and_compensates(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    server.script(OPENAI, runaway)
    report = await run_agent(ts_client, clerk(openai_ref(server), budget=Budget(max_tool_calls=3)))
    assert report.status == "NOT_DONE"
    assert report.reason == "budget exhausted: max_tool_calls 3 reached (3 used)"
    assert report.used.tool_calls == 3 and report.budget.max_tool_calls == 3
    assert [c.step for c in report.compensations] == [3, 2, 1]
    assert store.balances() == {"cy": 0}


async def test_the_same_call_again_and_again_is_a_loop(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    server.script(OPENAI, lambda body: openai_call("get_balance", account="dee"))
    report = await run_agent(ts_client, clerk(openai_ref(server)))
    assert report.status == "NOT_DONE"
    assert report.reason == (
        "budget exhausted: max_repeats 3 reached: get_balance asked for with the same "
        "arguments 3 times (a loop, not progress)"
    )
    assert len(report.steps) == 3 and [s.done for s in report.steps] == [True, True, False]


async def test_token_and_cost_budgets_stop_before_the_next_call(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    server.script(OPENAI, lambda body: openai_call("get_balance", account=f"x{len(body)}"))
    report = await run_agent(
        ts_client, clerk(openai_ref(server), budget=Budget(max_input_tokens=250, max_repeats=None))
    )
    assert report.reason == "budget exhausted: max_input_tokens 250 reached (300 used)"
    server.script(OPENAI, runaway)
    report = await run_agent(ts_client, clerk(openai_ref(server), budget=Budget(max_cost=0.0005)))
    assert report.reason == "budget exhausted: max_cost 0.0005 reached (0.0007 used)"


async def test_a_human_extends_the_budget_and_answers_a_question(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    replies = [
        openai_call("get_balance", account="eve"),
        openai_call("ask_human", question="How much should eve get?"),
        openai_call("post_entry", account="eve", amount=9),
        openai_call("finish", summary="paid eve 9"),
    ]
    server.script(OPENAI, replies)
    agent = clerk(openai_ref(server), budget=Budget(max_model_calls=2), on_budget="ask")
    async with keel_worker(ts_client, CATALOG, agent) as queue:
        run_id = f"model-{uuid.uuid4().hex[:8]}"
        RUN_IDS.append(run_id)
        handle = await ts_client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=agent, goal="pay eve"),
            id=run_id,
            task_queue=queue,
        )
        question = await next_pending(handle)
        assert (question.kind, question.reason, question.choices) == (
            "question",
            "the model asks: How much should eve get?",
            ["answer", "abort"],
        )
        await handle.execute_update(
            AgentWorkflow.decide,
            Decision(request_id=question.request_id, choice="answer", reason="9"),
        )
        pending = await next_pending(handle, after=question.request_id)
        assert pending.reason == "budget exhausted: max_model_calls 2 reached (2 used)"
        assert pending.choices == ["extend", "abort"]
        with pytest.raises(WorkflowUpdateFailedError):  # not a budget: refused, nothing changes
            await handle.execute_update(
                AgentWorkflow.decide,
                Decision(request_id=pending.request_id, choice="extend", args={"max_cost": -1}),
            )
        await handle.execute_update(
            AgentWorkflow.decide,
            Decision(request_id=pending.request_id, choice="extend", args={"max_model_calls": 5}),
        )
        report = await outcome(handle)
    assert report.status == "DONE", report.reason
    assert report.budget.max_model_calls == 5 and report.used.model_calls == 4
    assert store.balances() == {"eve": 9}
    assert tool_messages(server.requests(OPENAI)[2].body)[-1] == "the human answers: 9"


async def next_pending(handle: Any, after: str | None = None) -> Any:
    for _ in range(400):
        pending = (await handle.query(AgentWorkflow.report)).pending
        if pending is not None and pending.request_id != after:
            return pending
        await asyncio.sleep(0.025)
    raise AssertionError("the run never waited")


async def test_the_offline_scripted_model_acts_step_by_step(
    ts_client: Client, ledger_db: Path
) -> None:
    report = await run_agent(ts_client, ledger.ledger_agent, goal="Pay ann 3 and bo 4")
    assert report.status == "DONE", report.reason
    assert report.summary == "paid ann 3, bo 4"
    assert [(s.tool, s.args["account"], s.args["amount"]) for s in report.steps] == [
        ("post_entry", "ann", 3),
        ("post_entry", "bo", 4),
    ]
    # three calls to act, one to review (the verify route): done means verified
    assert report.used.model_calls == 4 and report.used.tool_calls == 2
    assert [c.model for c in report.model_calls] == ["scripted:ledger-react"] * 3 + [
        "scripted:ledger-review"
    ]
    assert report.verified and report.acceptance[-1].detail.startswith("the ledger holds")
    assert store.balances() == {"ann": 3, "bo": 4}


async def test_a_quick_model_can_answer_as_a_local_activity(
    ts_client: Client, ledger_db: Path
) -> None:
    route = Route(models=(ModelRef(provider="scripted", model="ledger-react", local=True),))
    agent = ledger.ledger_agent.model_copy(
        update={"name": "ledger-agent-local", "routes": Routes(act=route), "unverified_ok": True}
    )
    report = await run_agent(ts_client, agent, goal="Pay ann 3 and bo 4")
    assert report.status == "DONE", report.reason
    assert report.summary == "paid ann 3, bo 4" and store.balances() == {"ann": 3, "bo": 4}
    history = await ts_client.get_workflow_handle(report.run_id).fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    markers = [
        e
        for e in history.events
        if e.marker_recorded_event_attributes.marker_name == "core_local_activity"
    ]
    assert "keel.model_call" not in scheduled and scheduled.count("post_entry") == 2
    # The worker's agent (its tools checked in the same call) and three model calls: local
    # activity markers.
    assert len(markers) == 4
    entries = await timeline(ts_client, report.run_id)
    local = [(e.kind, e.name, e.outcome) for e in entries if e.name.endswith("(local)")]
    assert (
        local
        == [
            ("keel", "keel.resolve_agent (local)", "ok"),
        ]
        + [("model", "keel.model_call (local)", "ok")] * 3
    )
    with pytest.raises(ValidationError, match="local=True is for quick models"):
        ModelRef(provider="openai", model="gpt-test", local=True, timeout=timedelta(minutes=2))


async def test_a_local_model_that_gives_up_falls_back_to_the_next(
    ts_client: Client, ledger_db: Path
) -> None:
    # temporalio raises a local activity's failure bare, not as an ActivityError: the route
    # must still see it as the model giving up, not fail the run.
    route = Route(
        models=(
            ModelRef(provider="scripted", model="no-such-model", local=True),
            ModelRef(provider="scripted", model="ledger-react", local=True),
        )
    )
    agent = ledger.ledger_agent.model_copy(
        update={"name": "ledger-agent-fallback", "routes": Routes(act=route), "unverified_ok": True}
    )
    report = await run_agent(ts_client, agent, goal="Pay ann 3 and bo 4")
    assert report.status == "DONE", report.reason
    assert store.balances() == {"ann": 3, "bo": 4}
    fallbacks = report.model_calls[0].fallbacks
    assert len(fallbacks) == 1 and fallbacks[0].startswith("scripted:no-such-model: "), fallbacks


async def test_the_plan_route_plans_then_the_plan_runs(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    pay = {"title": "Pay fay", "tool": "post_entry", "args": {"account": "fay", "amount": 6}}
    bad = {"steps": [{"title": "Beam money", "tool": "teleport", "args": {}}]}
    good = {
        "steps": [pay],
        "acceptance": [
            {
                "criterion": "fay got 6",
                "check": "run_posted",
                "args": {"account": "fay", "expected": 6},
            }
        ],
    }
    server.script(OPENAI, [openai_call("submit_plan", **bad), openai_call("submit_plan", **good)])
    agent = clerk(openai_ref(server), routes=Routes(plan=Route(models=(openai_ref(server),))))
    report = await run_agent(ts_client, agent, goal="pay fay 6")
    assert report.status == "DONE", report.reason
    assert report.verified and [a.criterion for a in report.acceptance] == ["fay got 6"]
    assert [s.title for s in report.steps] == ["Pay fay"]
    assert store.balances() == {"fay": 6}
    first, second = (s.body for s in server.requests(OPENAI))
    assert [t["function"]["name"] for t in first["tools"]] == ["submit_plan"]
    assert "- post_entry: Post `amount` to `account`." in first["messages"][0]["content"]
    assert tool_messages(second) == ["steps use tools the agent does not have: ['teleport']"]
    assert [c.kind for c in report.model_calls] == ["plan", "plan"]


async def test_the_verify_route_can_refuse_done(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    server.script(
        OPENAI,
        [openai_call("post_entry", account="gil", amount=2), openai_call("finish", summary="ok")],
    )
    server.script(
        ANTHROPIC,
        [
            anthropic_call("verdict", passed="maybe"),
            anthropic_call("verdict", passed=False, reason="gil was to get 20, not 2"),
        ],
    )
    routes = Routes(
        act=Route(models=(openai_ref(server),)), verify=Route(models=(anthropic_ref(server),))
    )
    report = await run_agent(ts_client, clerk(routes=routes), goal="pay gil 20")
    assert report.status == "NOT_DONE"
    assert report.reason == (
        "acceptance failed: a model's review of the result (gil was to get 20, not 2)"
    )
    assert store.balances() == {"gil": 2}  # a failed acceptance does not compensate
    first, second = (s.body for s in server.requests(ANTHROPIC))
    facts = json.loads(first["messages"][0]["content"])
    assert facts["steps"][0]["args"] == {"account": "gil", "amount": 2}
    assert second["messages"][-1]["content"][0]["content"].startswith("invalid verdict: passed")


async def test_the_deadline_budget_counts_workflow_time_spent_waiting(
    ts_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    # Real seconds, not a skip of the shared server's clock: a skip can stall for as long as any
    # other run holds the time-skipping lock, and CI timed the RPC out twice that way.
    budget = timedelta(seconds=6)
    server.script(
        OPENAI,
        [openai_call("ask_human", question="Which account?"), openai_call("finish", summary="x")],
    )
    agent = clerk(openai_ref(server), budget=Budget(max_duration=budget))
    async with keel_worker(ts_client, CATALOG, agent) as queue:
        run_id = f"model-{uuid.uuid4().hex[:8]}"
        RUN_IDS.append(run_id)
        started = time.monotonic()
        handle = await ts_client.start_workflow(
            AgentWorkflow.run, AgentRunInput(agent=agent, goal="pay"), id=run_id, task_queue=queue
        )
        question = await next_pending(handle)
        # the human answers after the budget is spent (the clock is locked, so it runs in real time)
        await asyncio.sleep(budget.total_seconds() + 1 - (time.monotonic() - started))
        answer = Decision(request_id=question.request_id, choice="answer", reason="ann")
        await handle.execute_update(AgentWorkflow.decide, answer)
        report = await outcome(handle)
    assert report.status == "NOT_DONE"
    assert report.reason.startswith("budget exhausted: max_duration 0:00:06 reached")
    assert len(server.requests(OPENAI)) == 1  # the second model call never went out


def test_context_keeps_the_newest_results_in_full_and_summarizes_older_ones() -> None:
    turns = []
    for i in range(1, 5):
        call = ToolCallRequest(id=f"c{i}", name="get_balance", arguments="{}")
        turns.append(Message(role="assistant", tool_calls=(call,)))
        turns.append(
            Message(role="tool", tool_call_id=f"c{i}", content=f"result {i}\n" + "x" * 141)
        )
    policy = ActingPolicy(keep_results=2, summary_chars=20, result_chars=100)
    shown = model_view("system text", turns, policy)
    assert shown[0] == Message(role="system", content="system text")
    results = [m.content for m in shown if m.role == "tool"]
    assert results[:2] == [
        "[older result, trimmed] result 1 xxxxxxxxxxx",
        "[older result, trimmed] result 2 xxxxxxxxxxx",
    ]
    assert results[2:] == [
        "result 3\n" + "x" * 91 + " [... 50 more]",
        "result 4\n" + "x" * 91 + " [... 50 more]",
    ]
    assert [m.tool_call_id for m in shown if m.role == "tool"] == ["c1", "c2", "c3", "c4"]
    assert model_view("system text", turns, policy) == shown  # deterministic


def test_a_call_leaving_out_its_settings_gets_them_from_its_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_STORE_DIR", str(tmp_path / "blobs"))
    ref = ModelRef(provider="openai", model="gpt-test", api_key_env=KEY_ENV)
    first = ModelRequest(
        agent="a",
        kind="act",
        model=ref,
        messages=(Message(role="user", content="go"),),
        system="be brief",
        policy=ActingPolicy(keep_turns=9),
        preamble_ref=preamble_ref("be brief", ()),
    )
    _, conversation, full = context_store.expand(first)
    context = context_store.answered(full, conversation, ModelReply(text="ok"))
    later = ModelRequest(agent="a", kind="act", messages=(), context_ref=context)
    for restarted in (False, True):  # this worker's cache, then the store's link alone
        if restarted:
            context_store._settings.clear()
            context_store._conversations.clear()
            context_store._preambles.clear()
        # A rebuild walks the store's chain of links: model_call gives it a thread.
        assert context_store.has_conversation(later) is not restarted
        view, _, filled = context_store.expand(later)
        assert (filled.model, filled.policy) == (ref, ActingPolicy(keep_turns=9))
        assert filled.preamble_ref == first.preamble_ref and view.system == "be brief"
        assert [m.content for m in view.messages] == ["be brief", "go", "ok"]
    changed = later.model_copy(update={"model": ref.model_copy(update={"model": "gpt-other"})})
    assert context_store.expand(changed)[2].model_ref.model == "gpt-other"  # sent: it wins


def test_context_of_a_long_run_is_the_opening_and_the_newest_messages() -> None:
    turns = [Message(role="user", content="Goal: look up 300")]
    for i in range(1, 301):
        call = ToolCallRequest(id=f"c{i}", name="lookup", arguments="{}")
        turns.append(Message(role="assistant", tool_calls=(call,)))
        turns.append(Message(role="tool", tool_call_id=f"c{i}", content=f"record {i}"))
    policy = ActingPolicy(keep_turns=7)  # odd: the window must not open on a tool result
    shown = model_view("system text", turns, policy)
    # The goal, then the newest three calls with their results (six messages, not seven).
    assert shown[1] == turns[0]
    assert [m.tool_call_id for m in shown if m.role == "tool"] == ["c298", "c299", "c300"]
    assert shown[2].role == "assistant" and shown[2].tool_calls[0].id == "c298"
    assert shown[0].content == (
        "system text\n\n[Earlier in this run: 594 messages not shown, 297 of them tool "
        "results; the newest messages follow.]"
    )
    assert results_seen(shown) == 300  # what a model counting its results still sees
    assert len(model_view("system text", turns, ActingPolicy())) == 202  # default: newest 200
    short = turns[:5]
    assert model_view("system text", short, policy)[0].content == "system text"  # nothing hidden


def test_versions_of_a_conversation_share_one_list_until_they_branch() -> None:
    goal = Message(role="user", content="Goal: pay ann 3")
    call = Message(
        role="assistant", tool_calls=(ToolCallRequest(id="c1", name="pay", arguments="{}"),)
    )
    first = Version([], 0, 0).extended([goal, call])
    ok = first.extended([Message(role="tool", tool_call_id="c1", content="paid")])
    assert ok.messages is first.messages and (ok.length, ok.tools) == (3, 1)  # in place
    # A retried call answering differently branches from the older version: a copy, and the
    # newer version still reads what it had.
    failed = first.extended([Message(role="tool", tool_call_id="c1", content="refused")])
    assert failed.messages is not first.messages
    assert [m.content for m in failed.messages[: failed.length]][-1] == "refused"
    assert [m.content for m in ok.messages[: ok.length]][-1] == "paid"
    view = model_view(
        "system", ok.messages, ActingPolicy(), length=ok.length, tool_results=ok.tools
    )
    assert view[1:] == tuple(ok.messages[:3])


async def test_the_key_is_in_no_history_and_no_log_line(ts_client: Client) -> None:
    assert len(RUN_IDS) >= 10  # the runs of this module, all on the time-skipping server
    named = 0
    for run_id in RUN_IDS:
        history = await ts_client.get_workflow_handle(run_id).fetch_history()
        assert not history_holds(history, KEY)  # payloads included (to_json() base64s them)
        named += history_holds(history, KEY_ENV)
    assert named  # the key's name travels in the model calls: the search sees payloads
    assert LOGS.lines and not [line for line in LOGS.lines if KEY in line]


def test_wire_types_drop_defaults_and_read_back_the_same() -> None:
    """What crosses the activity boundary every step leaves its defaults out of the history."""
    ref = ModelRef(provider="openai", model="gpt-test", base_url=None, api_key_env="K")
    message = Message(role="tool", content="3", tool_call_id="c1", name="get_balance")
    output = ToolOutput(value=None, attempt=1)
    call = ToolCall(run_id="r", step=2, idempotency_key="k", grants=[Grant(scope="*")])
    for value in (ref, message, output, call):
        dumped = value.model_dump(mode="json")
        assert type(value).model_validate(dumped) == value
    assert ref.model_dump(mode="json") == {
        "provider": "openai",
        "model": "gpt-test",
        "api_key_env": "K",
    }
    assert output.model_dump(mode="json") == {}
    assert call.model_dump(mode="json")["grants"] == [{"scope": "*"}]


def test_loop_detection_carries_repeats_and_the_newest_calls_only() -> None:
    seen: Counter[str] = Counter({"noop:again": 3})  # the oldest key, but repeated
    seen.update(f"noop:{i:016x}" for i in range(REPEATS_CARRIED + 500))
    carried = recent_repeats(seen)
    assert carried["noop:again"] == 3
    assert len(carried) == REPEATS_CARRIED + 1
    assert f"noop:{REPEATS_CARRIED + 499:016x}" in carried
    assert "noop:0000000000000000" not in carried


class Invoice(BaseModel):
    customer: str
    total: int = Field(ge=0)


async def test_a_typed_result_is_checked_fed_back_and_given_back_typed(
    dev_client: Client, ledger_db: Path, server: ModelServer
) -> None:
    """Issue 15, part 4: finish must carry an output of the agent's type; a malformed one is
    fed back like any malformed answer; the report carries it as data, result() typed."""
    server.script(
        OPENAI,
        [
            openai_call("finish", summary="invoiced", output={"customer": "ann", "total": -3}),
            openai_call("finish", summary="invoiced"),  # no output at all
            openai_call("finish", summary="invoiced", output={"customer": "ann", "total": "12"}),
        ],
    )
    agent = clerk(openai_ref(server), name="invoicer", output_type=Invoice)
    client = await keel.connect(address=dev_address(dev_client))
    async with keel_worker(client, CATALOG, agent) as queue:
        run = await keel.start(
            client, agent="invoicer", goal="invoice ann", task_queue=queue, output_type=Invoice
        )
        invoice = await run.output()
        report = await run.result()
    assert invoice == Invoice(customer="ann", total=12)  # "12" validated into the type
    assert (report.status, report.output) == ("DONE", Invoice(customer="ann", total=12))
    assert (await keel.get(client, run.id).result()).output == {"customer": "ann", "total": 12}
    first, second, third = (seen.body for seen in server.requests(OPENAI))
    finish = next(t for t in first["tools"] if t["function"]["name"] == "finish")["function"]
    assert finish["parameters"]["properties"]["output"]["required"] == ["customer", "total"]
    assert finish["parameters"]["required"] == ["summary", "output"]
    assert (
        "invalid output for finish: total: Input should be greater than or equal to 0"
        in (tool_messages(second)[-1])
    )
    assert "missing argument 'output'" in tool_messages(third)[-1]
    assert report.used.model_calls == 3


def test_an_output_type_needs_an_act_route() -> None:
    planner = AgentSpec(name="typed-planner", output_type=Invoice, unverified_ok=True)
    with pytest.raises(CatalogError, match="'typed-planner': output_type needs an act route"):
        CATALOG.including(planner).check()


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_streamed_answer_gives_the_same_result_and_usage(
    dev_client: Client, ledger_db: Path, server: ModelServer, provider: str
) -> None:
    """Issue 15, part 3: with stream=True the adapter reads the API's SSE stream; the reply,
    usage and cost are those of the unstreamed answer, and the run's live events carry the
    text as it came."""
    said = "Paying ann five now."
    if provider == "openai":
        path, ref = OPENAI, openai_ref
        paying = openai_call("post_entry", account="ann", amount=5)
        paying.body["choices"][0]["message"]["content"] = said
        finishing = openai_call("finish", summary="paid ann 5")
    else:
        path, ref = ANTHROPIC, anthropic_ref
        paying = anthropic_call("post_entry", account="ann", amount=5)
        paying.body["content"][0]["text"] = said
        finishing = anthropic_call("finish", summary="paid ann 5")
        finishing.body["content"] = finishing.body["content"][1:]  # the tool call alone
    reports: dict[bool, RunReport] = {}
    texts: dict[bool, str] = {}
    for stream in (False, True):
        server.script(path, [copy.deepcopy(paying), copy.deepcopy(finishing)])
        agent = clerk(ref(server, stream=stream), name=f"streamer-{provider}-{stream}")
        async with keel_worker(dev_client, CATALOG, agent) as queue:
            run = await keel.start(
                await keel.connect(address=dev_address(dev_client)),
                agent=agent.name,
                goal="pay ann 5",
                task_queue=queue,
            )
            reports[stream] = await run.result()
            events = [e async for e in run.events()]
        texts[stream] = "".join(e.message for e in events if e.kind == "model_text")
    plain, streamed = reports[False], reports[True]
    assert streamed.status == plain.status == "DONE"
    assert streamed.used == plain.used  # tokens, calls and cost
    assert [(s.tool, s.args) for s in streamed.steps] == [(s.tool, s.args) for s in plain.steps]
    assert streamed.summary == plain.summary == "paid ann 5"
    assert [c.model_dump(exclude={"at", "latency_ms"}) for c in streamed.model_calls] == [
        c.model_dump(exclude={"at", "latency_ms"}) for c in plain.model_calls
    ]
    assert (texts[False], texts[True]) == ("", said)  # streamed text, as it came, only streamed
    bodies = [seen.body for seen in server.requests(path)]
    assert [b.get("stream", False) for b in bodies] == [False, False, True, True]
