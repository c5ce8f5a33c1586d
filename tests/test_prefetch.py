"""A model asked as a local activity runs the quick reads its answer chose (contracts.PrefetchPlan):
one local activity a step instead of two, each read still checked, still counted, and run
again under its own retry policy when it fails there."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import ActivityEnvironment

import examples.ledger as ledger
import keel.activities.prefetch as prefetch_module
from keel.activities import Catalog, scripted_model, tool
from keel.activities.prefetch import prefetch
from keel.runs import outcome
from keel.shared.context_view import results_seen
from keel.timeline import timeline
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import (
    ActingPolicy,
    AgentRunInput,
    AgentSpec,
    Budget,
    Grant,
    ModelRef,
    ModelReply,
    ModelRequest,
    PrefetchPlan,
    Route,
    Routes,
    RunReport,
    ToolCallRequest,
)
from tests import sample_tools
from tests.conftest import history_holds, keel_worker


def calls_from_goal(request: ModelRequest) -> list[tuple[str, dict[str, Any]]]:
    """The goal is a JSON list of [tool, args]: the model makes them one a turn, then finishes."""
    goal = next(m.content for m in request.messages if m.role == "user")
    return [(tool, args) for tool, args in json.loads(goal)]


@scripted_model("prefetch-test")
def one_call_a_turn(request: ModelRequest) -> ModelReply:
    wanted = calls_from_goal(request)
    done = results_seen(request.messages)
    name, args = wanted[done] if done < len(wanted) else ("finish", {"summary": "done"})
    call = ToolCallRequest(id=f"c{done}", name=name, arguments=json.dumps(args))
    return ModelReply(tool_calls=(call,))


@scripted_model("prefetch-test-two")
def two_calls_a_turn(request: ModelRequest) -> ModelReply:
    """Both reads in the first answer, then finish."""
    if results_seen(request.messages):
        done = ToolCallRequest(id="f", name="finish", arguments='{"summary": "done"}')
        return ModelReply(tool_calls=(done,))
    calls = tuple(
        ToolCallRequest(id=f"c{i}", name=name, arguments=json.dumps(args))
        for i, (name, args) in enumerate(calls_from_goal(request))
    )
    return ModelReply(tool_calls=calls)


CATALOG = Catalog.of(
    [sample_tools.local_lookup, ledger.get_balance, one_call_a_turn, two_calls_a_turn]
)


def agent(model: str = "prefetch-test", local: bool = True, **update: Any) -> AgentSpec:
    spec = AgentSpec(
        name=f"prefetch-{model}-{'local' if local else 'remote'}",
        tools=("local_lookup", "get_balance"),
        routes=Routes(act=Route(models=(ModelRef(provider="scripted", model=model, local=local),))),
        grants=(Grant(scope="ledger:read:ann"),),
        loop=ActingPolicy(max_turns=10),
        unverified_ok=True,
    )
    return spec.model_copy(update=update)


async def run(
    client: Client, spec: AgentSpec, calls: list[Any]
) -> tuple[RunReport, WorkflowHistory]:
    async with keel_worker(client, CATALOG, spec) as queue:
        handle = await client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=spec, goal=json.dumps(calls)),
            id=f"prefetch-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        report = await outcome(handle)
    return report, await handle.fetch_history()


def local_activities(history: WorkflowHistory) -> list[str]:
    """The activity type of every local activity marker, in order."""
    names = []
    for event in history.events:
        marker = event.marker_recorded_event_attributes
        if marker.marker_name == "core_local_activity":
            data = json.loads(marker.details["data"].payloads[0].data)
            names.append(data["activity_type"])
    return names


def prefetched(history: WorkflowHistory) -> list[tuple[int, str]]:
    """(step, tool) of every read a model call ran, from its marker's result."""
    ran = []
    for event in history.events:
        marker = event.marker_recorded_event_attributes
        if marker.marker_name == "core_local_activity" and "result" in marker.details:
            result = json.loads(marker.details["result"].payloads[0].data)
            if isinstance(result, dict):
                ran += [(p["step"], p["tool"]) for p in result.get("prefetched", [])]
    return ran


async def test_a_local_model_runs_the_reads_it_chose_in_one_local_activity(
    ts_client: Client, ledger_db: Path
) -> None:
    keys = [f"k-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    report, history = await run(ts_client, agent(), [["local_lookup", {"key": k}] for k in keys])
    assert report.status == "DONE", report.reason
    assert [(s.index, s.done, s.result) for s in report.steps] == [
        (i, True, f"value of {k}") for i, k in enumerate(keys, 1)
    ]
    assert report.used.tool_calls == 3 and report.used.model_calls == 4
    assert all(sample_tools.CALLS[f"local_lookup:{k}"] == 1 for k in keys)  # run once each
    assert prefetched(history) == [(1, "local_lookup"), (2, "local_lookup"), (3, "local_lookup")]
    # One local activity a step: the model call; no read of its own. (The worker checks the
    # agent's tools with resolving it: no keel.prepare_plan of its own either.)
    assert local_activities(history) == ["keel.resolve_agent"] + ["keel.model_call"] * 4
    entries = await timeline(ts_client, report.run_id)
    reads = [(e.name, e.step) for e in entries if e.name.endswith("(with the model call)")]
    assert reads == [("local_lookup (with the model call)", i) for i in (1, 2, 3)]


async def test_several_reads_of_one_answer_each_keep_their_step(
    ts_client: Client, ledger_db: Path
) -> None:
    keys = [f"k-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    spec = agent("prefetch-test-two")
    report, history = await run(ts_client, spec, [["local_lookup", {"key": k}] for k in keys])
    assert report.status == "DONE", report.reason
    assert [s.result for s in report.steps] == [f"value of {k}" for k in keys]
    assert prefetched(history) == [(1, "local_lookup"), (2, "local_lookup")]
    assert "local_lookup" not in local_activities(history)


async def test_no_read_runs_ahead_of_a_budget_that_refuses_it(
    ts_client: Client, ledger_db: Path
) -> None:
    keys = [f"k-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    spec = agent("prefetch-test-two", budget=Budget(max_tool_calls=1, max_repeats=None))
    report, history = await run(ts_client, spec, [["local_lookup", {"key": k}] for k in keys])
    assert report.status == "NOT_DONE" and "max_tool_calls 1 reached" in (report.reason or "")
    assert prefetched(history) == [(1, "local_lookup")]
    assert sample_tools.CALLS.get(f"local_lookup:{keys[1]}", 0) == 0  # never run


async def test_a_read_that_fails_with_the_model_call_runs_again_under_its_retry_policy(
    ts_client: Client, ledger_db: Path
) -> None:
    key = f"k-{uuid.uuid4().hex[:6]}"
    report, history = await run(
        ts_client, agent(), [["local_lookup", {"key": key, "fail_times": 1}]]
    )
    assert report.status == "DONE", report.reason
    assert report.steps[0].done and report.steps[0].result == f"value of {key}"
    # Once with the model call (failed, dropped), then its own local activity: attempt 1
    # fails, attempt 2 succeeds, as its retry policy allows.
    assert sample_tools.CALLS[f"local_lookup:{key}"] == 3
    assert report.steps[0].attempts == 2
    assert prefetched(history) == []
    assert local_activities(history).count("local_lookup") == 1


async def test_a_read_the_grants_deny_is_not_run_with_the_model_call(
    ts_client: Client, ledger_db: Path
) -> None:
    calls = [["get_balance", {"account": "ann"}], ["get_balance", {"account": "bo"}]]
    report, history = await run(ts_client, agent(), calls)
    assert report.status == "DONE", report.reason
    ann, bo = report.steps
    assert ann.done and ann.result == 0
    assert not bo.done and "denied" in (bo.error or "")
    assert prefetched(history) == [(1, "get_balance")]  # bo's was never run


async def test_a_remote_model_call_is_sent_no_prefetch(ts_client: Client, ledger_db: Path) -> None:
    key = f"k-{uuid.uuid4().hex[:6]}"
    report, history = await run(ts_client, agent(local=False), [["local_lookup", {"key": key}]])
    assert report.status == "DONE", report.reason
    # Its input is in the history: the plan would add bytes to every step.
    assert not history_holds(history, '"prefetch"')
    assert local_activities(history).count("local_lookup") == 1


# The limits of what one model call runs ahead, on the activity side alone (temporalio's
# ActivityEnvironment gives it an activity context, as the worker would).


@tool(local=True)
def slow_read(seconds: float) -> str:
    """A read that takes its time."""
    time.sleep(seconds)
    return f"slept {seconds}"


@tool(local=True)
def big_read(size: int) -> str:
    """A read whose result is `size` characters."""
    return "x" * size


TOOLS = {t.name: t for t in (sample_tools.local_lookup, slow_read, big_read, ledger.post_entry)}


def plan(*tools: str) -> PrefetchPlan:
    return PrefetchPlan(
        tools=tools, first_step=5, run_id="r", key_prefix="r:", grants=(Grant(scope="*"),)
    )


def answer(*calls: tuple[str, dict[str, Any]]) -> ModelReply:
    requests = (
        ToolCallRequest(id=f"c{i}", name=name, arguments=json.dumps(args))
        for i, (name, args) in enumerate(calls)
    )
    return ModelReply(tool_calls=tuple(requests))


async def run_ahead(plan: PrefetchPlan, reply: ModelReply) -> list[tuple[int, str, Any]]:
    ran = await ActivityEnvironment().run(prefetch, plan, reply, TOOLS)
    return [(p.step, p.tool, p.output.value) for p in ran]


async def test_only_the_leading_reads_it_was_offered_run_ahead_numbered_as_steps() -> None:
    reply = answer(
        ("local_lookup", {"key": "a"}),
        ("local_lookup", {"key": "b"}),
        ("post_entry", {"account": "ann", "amount": 1}),  # a write: never run ahead
        ("local_lookup", {"key": "c"}),  # after it, steps may be numbered otherwise
    )
    assert await run_ahead(plan("local_lookup", "post_entry"), reply) == [
        (5, "local_lookup", "value of a"),
        (6, "local_lookup", "value of b"),
    ]
    # A read the workflow did not offer (an approval holds it, say) stops it too.
    assert await run_ahead(plan("slow_read"), reply) == []
    # No more than the budget still allows.
    one_left = plan("local_lookup").model_copy(update={"most": 1})
    assert await run_ahead(one_left, reply) == [(5, "local_lookup", "value of a")]


async def test_a_read_slower_than_the_wait_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch_module, "PREFETCH_WAIT", 0.2)
    reply = answer(("local_lookup", {"key": "a"}), ("slow_read", {"seconds": 1.0}))
    assert await run_ahead(plan("local_lookup", "slow_read"), reply) == [
        (5, "local_lookup", "value of a")
    ]


async def test_what_a_reply_carries_of_outputs_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_INLINE_LIMIT", str(64 * 1024))  # outputs inline, not by reference
    reply = answer(*[("big_read", {"size": 30_000})] * 3)
    ran = await run_ahead(plan("big_read"), reply)
    assert [step for step, _, _ in ran] == [5, 6]  # the third would pass PREFETCHED_BYTES
    assert all(len(value) == 30_000 for _, _, value in ran)
