"""Parallel tool calls (issue 19): the reads of one model answer run at once, writes in their
turn unless declared parallel, results go back in call order, every call is counted by the
budget before any starts, compensation runs in reverse completion order, and the history
replays (the session's end replays every history these tests make)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from temporalio.client import Client

from examples import ledger
from keel.activities.catalog import Catalog
from keel.runs import outcome
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import ActingPolicy, AgentRunInput, Budget, Grant, RunReport
from tests import sample_tools
from tests.conftest import keel_worker
from tests.model_server import ModelServer, openai_call, openai_calls
from tests.test_models import KEY, KEY_ENV, clerk, openai_ref

CATALOG = Catalog.from_modules([ledger, sample_tools])
COMPLETIONS = "/openai/v1/chat/completions"


@pytest.fixture(autouse=True)
def model_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    sample_tools.NAPS.clear()
    sample_tools.UNDONE.clear()


async def act(client: Client, server: ModelServer, **agent: Any) -> RunReport:
    spec = clerk(
        openai_ref(server),
        name=f"parallel-{uuid.uuid4().hex[:6]}",
        tools=("nap", "book", "get_balance", "post_entry"),
        grants=(Grant(scope="ledger:*"),),
        **agent,
    )
    async with keel_worker(client, CATALOG, spec) as queue:
        handle = await client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=clerk(name=spec.name), goal="rest"),
            id=f"par-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        return await outcome(handle)


def times(label: str, what: str) -> float:
    return next(t for name, kind, t in sample_tools.NAPS if name == label and kind == what)


async def test_reads_run_at_once_and_their_results_return_in_call_order(
    dev_client: Client,
) -> None:
    with ModelServer() as server:
        server.script(
            COMPLETIONS,
            [
                openai_calls(
                    ("nap", {"label": "slow", "seconds": 0.8}),
                    ("nap", {"label": "quick", "seconds": 0.1}),
                    ("nap", {"label": "mid", "seconds": 0.4}),
                ),
                openai_call("finish", summary="rested"),
            ],
        )
        report = await act(dev_client, server)
        second = server.requests(COMPLETIONS)[1].body["messages"]
    assert report.status == "DONE", report.reason
    # All three started before the slowest ended, and the quick one ended first...
    assert max(times(n, "start") for n in ("slow", "quick", "mid")) < times("slow", "end")
    assert times("quick", "end") < times("mid", "end") < times("slow", "end")
    # ...yet the model reads the results in the order it asked for them.
    results = [m["content"] for m in second if m["role"] == "tool"]
    assert [json.loads(r) for r in results] == [
        "slow rested 0.8s",
        "quick rested 0.1s",
        "mid rested 0.4s",
    ]
    assert [s.tool for s in report.steps] == ["nap", "nap", "nap"]
    assert all(s.done for s in report.steps)


@pytest.mark.parametrize("policy", [ActingPolicy(max_parallel=1), ActingPolicy()])
async def test_a_write_waits_its_turn_and_max_parallel_one_runs_calls_in_turn(
    dev_client: Client, policy: ActingPolicy
) -> None:
    with ModelServer() as server:
        server.script(
            COMPLETIONS,
            [
                openai_calls(
                    ("nap", {"label": "a", "seconds": 0.3}),
                    ("post_entry", {"account": "ann", "amount": 1}),
                    ("nap", {"label": "b", "seconds": 0.1}),
                ),
                openai_call("finish", summary="done"),
            ],
        )
        report = await act(dev_client, server, loop=policy)
    assert report.status == "DONE", report.reason
    posted = next(s for s in report.steps if s.tool == "post_entry")
    assert posted.started_at is not None and posted.finished_at is not None
    assert times("a", "end") < times("b", "start")  # the write stood between the two reads


async def test_every_call_is_counted_before_any_starts(dev_client: Client) -> None:
    with ModelServer() as server:
        server.script(
            COMPLETIONS,
            [
                openai_calls(
                    ("nap", {"label": "x", "seconds": 0.1}),
                    ("nap", {"label": "y", "seconds": 0.1}),
                    ("nap", {"label": "z", "seconds": 0.1}),
                ),
            ],
        )
        report = await act(dev_client, server, budget=Budget(max_tool_calls=2))
    assert report.status == "NOT_DONE" and "max_tool_calls 2 reached" in report.reason
    assert sample_tools.NAPS == []  # the third call's refusal came before any call started


async def test_parallel_writes_are_undone_in_reverse_completion_order(dev_client: Client) -> None:
    with ModelServer() as server:
        server.script(
            COMPLETIONS,
            [
                openai_calls(
                    ("book", {"label": "first-asked", "seconds": 0.6}),
                    ("book", {"label": "second-asked", "seconds": 0.1}),
                ),
                openai_call("nap", label="over", seconds=0.1),  # the budget is spent: unwind
            ],
        )
        report = await act(dev_client, server, budget=Budget(max_tool_calls=2))
    assert report.status == "NOT_DONE"
    # second-asked completed first, so it is undone last.
    assert sample_tools.UNDONE == ["first-asked", "second-asked"]
    assert [c.status for c in report.compensations] == ["done", "done"]
