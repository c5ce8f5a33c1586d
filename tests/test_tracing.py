"""Keel's spans through temporalio's OpenTelemetryPlugin, recorded by the SDK's in-memory
exporter: the tree of a run with a retry, an approval wait and a compensation, and no second
copy of the workflow's spans when its history is replayed."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode
from temporalio.client import Client, WorkflowUpdateFailedError
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
    PLAN_RUNNER,
    AgentRunInput,
    AgentSpec,
    ApprovalPolicy,
    ArgRule,
    Decision,
    Grant,
    ModelRef,
    PlanSpec,
    Route,
    Routes,
    StepSpec,
)
from tests import sample_tools
from tests.conftest import SPANS as EXPORTER
from tests.conftest import dev_address
from tests.model_server import OPENAI, ModelServer, openai_call
from tests.processes import WorkerProcess, starter

CATALOG = Catalog.from_modules([ledger, sample_tools])


def keel_spans() -> list[Any]:  # ReadableSpans; Any: their attributes are read by key
    return [s for s in EXPORTER.get_finished_spans() if s.name.startswith("keel.")]


def parent_of(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan | None:
    by_id = {s.context.span_id: s for s in spans}
    return by_id.get(span.parent.span_id) if span.parent else None


async def traced_client(client: Client) -> Client:
    """A client on `client`'s server with temporalio's OpenTelemetryPlugin (the tests' SDK
    provider records what it and the workers built on it emit)."""
    return await Client.connect(
        client.service_client.config.target_host,
        data_converter=pydantic_data_converter,
        plugins=[OpenTelemetryPlugin()],
    )


def ancestors(span: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    names, current = [], parent_of(span, spans)
    while current is not None:
        names.append(current.name)
        current = parent_of(current, spans)
    return names


async def test_span_tree_of_a_run_with_a_retry_a_wait_and_a_compensation(
    ts_client: Client, ledger_db: Path
) -> None:
    traced = await traced_client(ts_client)
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
        with pytest.raises(WorkflowUpdateFailedError):  # edited arguments that do not fit
            await handle.execute_update(
                AgentWorkflow.decide,
                Decision(request_id=pending.request_id, choice="edit", args={"account": 5}),
            )
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

    # What LLM observability tools read: OpenInference kinds, tool parameters, ERROR statuses.
    kinds = {s.name: s.attributes["openinference.span.kind"] for s in spans}
    assert kinds["keel.run"] == "AGENT" and kinds["keel.tool_call"] == "TOOL"
    assert kinds["keel.step"] == kinds["keel.plan"] == kinds["keel.approval_wait"] == "CHAIN"
    (agent_span,) = [s for s in spans if s.name == "keel.run"]
    assert agent_span.status.status_code == StatusCode.ERROR  # NOT_DONE
    assert agent_span.status.description == "step 3 'big' rejected: too much"
    assert [e.name for e in agent_span.events] == ["exception"]
    first_flaky = min(flaky_calls, key=lambda s: s.start_time)
    assert first_flaky.status.status_code == StatusCode.ERROR  # the failed attempt
    assert first_flaky.attributes["tool.name"] == "flaky"
    assert json.loads(first_flaky.attributes["tool.parameters"]) == {
        "fail_times": 1,
        "label": label,
    }
    assert steps[0].status.status_code == StatusCode.UNSET  # done: nothing to flag
    refused, accepted = sorted(
        (s for s in spans if s.name == "keel.decision"), key=lambda s: s.start_time
    )
    assert refused.status.status_code == StatusCode.ERROR and refused.events[0].name == "exception"
    assert accepted.status.status_code == StatusCode.UNSET
    assert steps[2].status.status_code == StatusCode.ERROR

    # Replaying the history emits none of the workflow's spans again.
    before = len(keel_spans())
    history = await handle.fetch_history()
    replayer = Replayer(workflows=[], plugins=[KeelPlugin(), OpenTelemetryPlugin()])
    await replayer.replay_workflow(history)
    assert len(keel_spans()) == before


async def test_llm_spans_carry_model_and_tokens_equal_to_the_report(
    ts_client: Client, ledger_db: Path
) -> None:
    traced = await traced_client(ts_client)
    with ModelServer() as server:
        server.script(
            OPENAI,
            [
                openai_call("post_entry", account="uma", amount=2),
                openai_call("finish", summary="ok"),
            ],
        )
        model = ModelRef(provider="openai", model="gpt-test", base_url=server.url + "/openai/v1")
        actor = AgentSpec(
            name="traced-actor",
            tools=("post_entry",),
            grants=(Grant(scope="ledger:*"),),
            routes=Routes(act=Route(models=(model,))),
            unverified_ok=True,
        )
        clerk = ledger.ledger_clerk
        queue = f"trace-{uuid.uuid4().hex[:6]}"
        EXPORTER.clear()
        async with Worker(traced, task_queue=queue, plugins=[KeelPlugin(CATALOG.including(actor))]):
            acted = await outcome(
                await traced.start_workflow(
                    AgentWorkflow.run,
                    AgentRunInput(agent=AgentSpec(name=actor.name), goal="pay uma 2"),
                    id=f"trace-act-{queue}",
                    task_queue=queue,
                )
            )
            planned = await outcome(
                await traced.start_workflow(
                    AgentWorkflow.run,
                    AgentRunInput(agent=AgentSpec(name=clerk.name), goal="Pay ivy 3"),
                    id=f"trace-plan-{queue}",
                    task_queue=queue,
                )
            )
    assert acted.status == planned.status == "DONE", (acted.reason, planned.reason)
    llm = [s for s in keel_spans() if s.attributes["openinference.span.kind"] == "LLM"]
    acting = [s for s in llm if s.attributes["keel.kind"] == "act"]
    assert len(acting) == acted.used.model_calls == 2
    assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in acting) == acted.used.input_tokens
    assert sum(s.attributes["llm.token_count.completion"] for s in acting) == (
        acted.used.output_tokens
    )
    assert {s.attributes["llm.model_name"] for s in acting} == {"gpt-test"}
    assert {s.attributes["llm.provider"] for s in acting} == {"openai"}
    # Each model call sits under the step it chose (a "turn" when it chose to finish).
    spans = keel_spans()
    first, last = sorted(acting, key=lambda s: s.start_time)
    chose = parent_of(first, spans)
    assert chose is not None and chose.name == "keel.step"
    said = dict(chose.attributes or {})
    assert (said["keel.step"], said["keel.tool"], said["keel.outcome"]) == (1, "post_entry", "done")
    assert [c.name for c in spans if parent_of(c, spans) is chose and c.name == "keel.tool_call"]
    finished = parent_of(last, spans)
    assert finished is not None and finished.name == "keel.turn"
    # The planner's answer is a model call too: a span, and one model call in the report.
    (planning,) = [s for s in llm if s.attributes["keel.kind"] == "plan"]
    assert planning.attributes["gen_ai.request.model"] == clerk.model
    assert planned.used.model_calls == 1


async def test_a_finished_calls_span_survives_a_sigkill_right_after(
    dev_client: Client, tmp_path: Path
) -> None:
    """The span of a completed tool call is exported before the call reports completion: the
    worker is killed while the next step runs, and step 1's span is in the exporter's output."""
    db = tmp_path / "ledger.sqlite"
    env = {
        "TEMPORAL_ADDRESS": dev_address(dev_client),
        "KEEL_LEDGER_DB": str(db),
        "KEEL_STORE_DIR": str(tmp_path / "blobs"),
        "OTEL_TRACES_EXPORTER": "console",  # batched: 5 s before an export of its own
    }
    queue = f"spans-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, log, "--task-queue", queue, "--tools", "examples.ledger")
    steps = [
        StepSpec(title="first", tool="post_entry", args={"account": "q", "amount": 1}),
        StepSpec(title="slow", tool="post_entry", args={"account": "r", "amount": 1, "pause_s": 5}),
    ]
    await worker.start()
    try:
        await dev_client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(
                agent=PLAN_RUNNER, goal="spans", plan=PlanSpec(goal="spans", steps=steps)
            ),
            id=f"spans-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        for _ in range(600):  # until step 2 has written: step 1 reported long before
            if db.exists() and "r" in store_balances(db):
                break
            await asyncio.sleep(0.02)
        await worker.kill()
    finally:
        await worker.stop()
    text = log.read_text()
    assert '"name": "keel.tool_call"' in text, text[-2000:]
    assert '"keel.step": 1' in text and '"tool.name": "post_entry"' in text


def store_balances(db: Path) -> dict[str, int]:
    try:
        with sqlite3.connect(db) as conn:
            return dict(conn.execute("SELECT account, SUM(amount) FROM entries GROUP BY account"))
    except sqlite3.OperationalError:
        return {}


async def test_the_starters_span_is_the_parent_of_the_run(
    dev_client: Client, ledger_db: Path, tmp_path: Path
) -> None:
    traced = await traced_client(dev_client)
    queue = f"trace-{uuid.uuid4().hex[:6]}"
    plan = tmp_path / "plan.json"
    step = StepSpec(title="pay", tool="post_entry", args={"account": "sid", "amount": 1})
    plan.write_text(PlanSpec(goal="traced", steps=[step], unverified_ok=True).model_dump_json())
    EXPORTER.clear()
    async with Worker(traced, task_queue=queue, plugins=[KeelPlugin(CATALOG)]):
        env = {
            "TEMPORAL_ADDRESS": dev_address(dev_client),
            "KEEL_TASK_QUEUE": queue,
            "OTEL_TRACES_EXPORTER": "console",
        }
        done = await starter("run", "--plan", str(plan), "--wait", "--json", env=env)
    assert done.code == 0, done.err
    start = done.out.index('{\n    "name": "keel.starter"')
    exported = json.loads(done.out[start : done.out.index("\n}", start) + 2])
    (run,) = [s for s in keel_spans() if s.name == "keel.run"]
    assert f"0x{run.context.trace_id:032x}" == exported["context"]["trace_id"]


async def test_prompt_and_response_content_only_when_asked_and_redacted(
    ts_client: Client, ledger_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin = f"pin-{uuid.uuid4().hex[:8]}"
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"LEDGER_PIN": pin}))
    monkeypatch.setenv("KEEL_SECRETS_FILE", str(secrets))
    traced = await traced_client(ts_client)
    exchanges: dict[str, list[Any]] = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("KEEL_TRACE_CONTENT", setting)
        with ModelServer() as server:
            server.script(OPENAI, [openai_call("finish", summary=f"done, and {pin} stays secret")])
            model = ModelRef(
                provider="openai", model="gpt-test", base_url=server.url + "/openai/v1"
            )
            actor = AgentSpec(
                name="talker",
                tools=("post_entry",),
                routes=Routes(act=Route(models=(model,))),
                unverified_ok=True,
            )
            queue = f"trace-{uuid.uuid4().hex[:6]}"
            EXPORTER.clear()
            async with Worker(
                traced, task_queue=queue, plugins=[KeelPlugin(CATALOG.including(actor))]
            ):
                await outcome(
                    await traced.start_workflow(
                        AgentWorkflow.run,
                        AgentRunInput(agent=AgentSpec(name="talker"), goal=f"say hi ({pin})"),
                        id=f"trace-talk-{queue}",
                        task_queue=queue,
                    )
                )
        exchanges[setting] = [s for s in keel_spans() if s.name == "keel.model_exchange"]
    assert exchanges["0"] == []  # off by default: no prompt, no response
    (exchange,) = exchanges["1"]
    prompt, response = exchange.attributes["input.value"], exchange.attributes["output.value"]
    assert "say hi ([redacted])" in prompt and pin not in prompt
    assert "[redacted] stays secret" in response and pin not in response
