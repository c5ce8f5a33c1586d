"""Keel's spans through temporalio's OpenTelemetryPlugin, recorded by the SDK's in-memory
exporter: the tree of a run with a retry, an approval wait and a compensation, and no second
copy of the workflow's spans when its history is replayed."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from temporalio.client import Client
from temporalio.contrib.opentelemetry import OpenTelemetryPlugin
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, Worker

import examples.ledger as ledger
from examples.ledger import store
from keel import KeelPlugin
from keel.activities import Catalog
from keel.runs import outcome
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import (
    AgentRunInput,
    AgentSpec,
    ApprovalPolicy,
    ArgRule,
    Decision,
    Grant,
    PlanSpec,
    StepSpec,
)
from tests import sample_tools
from tests.conftest import SPANS as EXPORTER

CATALOG = Catalog.from_modules([ledger, sample_tools])


def keel_spans() -> list[Any]:  # ReadableSpans; Any: their attributes are read by key
    return [s for s in EXPORTER.get_finished_spans() if s.name.startswith("keel.")]


def parent_of(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan | None:
    by_id = {s.context.span_id: s for s in spans}
    return by_id.get(span.parent.span_id) if span.parent else None


def ancestors(span: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    names, current = [], parent_of(span, spans)
    while current is not None:
        names.append(current.name)
        current = parent_of(current, spans)
    return names


async def test_span_tree_of_a_run_with_a_retry_a_wait_and_a_compensation(
    ts_client: Client, ledger_db: Path
) -> None:
    traced = await Client.connect(
        ts_client.service_client.config.target_host,
        data_converter=pydantic_data_converter,
        plugins=[OpenTelemetryPlugin()],
    )
    queue = f"trace-{uuid.uuid4().hex[:6]}"
    gate = ApprovalPolicy(rules=(ArgRule(arg="amount", op=">", value=100),))
    agent = AgentSpec(name="traced", approvals={"post_entry": gate}, grants=(Grant(scope="*"),))
    label = uuid.uuid4().hex[:6]
    plan = PlanSpec(
        goal="trace",
        steps=[
            StepSpec(title="pay", tool="post_entry", args={"account": "tia", "amount": 4}),
            StepSpec(title="flaky", tool="flaky", args={"label": label, "fail_times": 1}),
            StepSpec(title="big", tool="post_entry", args={"account": "tia", "amount": 400}),
        ],
    )
    EXPORTER.clear()
    async with Worker(traced, task_queue=queue, plugins=[KeelPlugin(CATALOG.including(agent))]):
        handle = await traced.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=agent, goal="trace", plan=plan),
            id=f"trace-{label}",
            task_queue=queue,
        )
        for _ in range(400):
            pending = (await handle.query(AgentWorkflow.report)).pending
            if pending is not None:
                break
            await asyncio.sleep(0.025)
        assert pending is not None
        await handle.execute_update(
            AgentWorkflow.decide,
            Decision(request_id=pending.request_id, choice="reject", reason="too much"),
        )
        report = await outcome(handle)
    assert report.status == "NOT_DONE" and store.balances() == {"tia": 0}

    spans = keel_spans()
    names = [s.name for s in spans]
    (run,) = [s for s in spans if s.name == "keel.run"]
    assert run.attributes["keel.status"] == "NOT_DONE"
    assert run.attributes["keel.agent"] == "traced"
    steps = sorted((s for s in spans if s.name == "keel.step"), key=lambda s: s.start_time)
    assert [(s.attributes["keel.step"], s.attributes["keel.outcome"]) for s in steps] == [
        (1, "done"),
        (2, "done"),
        (3, "failed"),
    ]
    assert steps[1].attributes["keel.attempts"] == 2
    assert steps[2].attributes["keel.exception"] == "Unwind"  # the rejection stopped the plan
    assert all(parent_of(s, spans) is run for s in steps)
    flaky_calls = [
        s for s in spans if s.name == "keel.tool_call" and s.attributes["keel.tool"] == "flaky"
    ]
    assert sorted(s.attributes["keel.attempt"] for s in flaky_calls) == [1, 2]
    assert [
        s.attributes["keel.outcome"] for s in sorted(flaky_calls, key=lambda s: s.start_time)
    ] == [
        "failed",
        "ok",
    ]
    assert all("keel.step" in ancestors(s, spans) for s in flaky_calls)  # across the activity
    (wait,) = [s for s in spans if s.name == "keel.approval_wait"]
    assert wait.attributes["keel.choice"] == "reject" and "keel.step" in ancestors(wait, spans)
    (undo,) = [s for s in spans if s.name == "keel.compensation"]
    assert undo.attributes["keel.outcome"] == "done" and parent_of(undo, spans) is run
    assert names.count("keel.plan") == 1

    # Replaying the history emits none of the workflow's spans again.
    before = len(keel_spans())
    history = await handle.fetch_history()
    replayer = Replayer(workflows=[], plugins=[KeelPlugin(), OpenTelemetryPlugin()])
    await replayer.replay_workflow(history)
    assert len(keel_spans()) == before
