"""A model asked as a local activity runs the quick reads its answer chose (contracts.PrefetchPlan):
one local activity a step instead of two, each read still checked, still counted, and run
again under its own retry policy when it fails there."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHistory

import examples.ledger as ledger
from keel.activities import Catalog, scripted_model
from keel.runs import outcome
from keel.shared.context_view import results_seen
from keel.timeline import timeline
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import (
    ActingPolicy,
    AgentRunInput,
    AgentSpec,
    Grant,
    ModelRef,
    ModelReply,
    ModelRequest,
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
