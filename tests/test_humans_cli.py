"""Deciding from scripts on the dev server: starter.py approve/reject/decide/pending, with the
run waiting durably through a worker SIGKILL, a decision sent while no worker runs, and a
restart of a persisted dev server."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

import examples.ledger as ledger
from examples.ledger import store
from keel.activities import Catalog
from keel.runs import outcome
from keel.workflows.contracts import RunReport
from tests.conftest import dev_address, keel_worker, replay_all, wait_until
from tests.processes import Result, WorkerProcess, run, starter
from tests.test_crash_resume import ledger_rows
from tests.test_temporal_dev import free_port_pair

GOAL = "Pay alice 30 and zed 500"  # zed 500 is over the ledger clerk's 100 threshold


@pytest_asyncio.fixture
async def cli_env(dev_client: Client, ledger_db: Path) -> AsyncIterator[dict[str, str]]:
    async with keel_worker(dev_client, Catalog.from_modules([ledger])) as queue:
        yield {"TEMPORAL_ADDRESS": dev_address(dev_client), "KEEL_TASK_QUEUE": queue}


def refused(result: Result, expected: str) -> None:
    assert result.code == 6, result
    assert "Traceback" not in result.err
    assert result.err.strip().startswith("starter.py: refused: "), result.err
    assert expected in result.err, result.err


async def start_gated(env: dict[str, str]) -> tuple[str, dict]:
    """Start the gated goal with --wait: it returns as soon as the run waits on a human."""
    run_id = f"gated-{uuid.uuid4().hex[:8]}"
    result = await starter(
        "run", "ledger-clerk", "--goal", GOAL, "--id", run_id, "--wait", "--json", env=env
    )
    assert result.code == 4, result  # WAITING_ON_YOU
    return run_id, json.loads(result.out)


async def status_of(run_id: str, env: dict[str, str]) -> dict:
    result = await starter("status", run_id, "--json", env=env)
    assert result.code in (0, 3, 4, 5), result
    return json.loads(result.out)


async def test_wait_list_approve_then_done(cli_env: dict, dev_client: Client) -> None:
    run_id, report = await start_gated(cli_env)
    pending = report["pending"]
    assert report["status"] == "WAITING_ON_YOU"
    assert (pending["step"], pending["tool"], pending["choices"]) == (
        2,
        "post_entry",
        ["approve", "reject", "edit"],
    )
    assert pending["args_summary"]["amount"] == 500
    assert store.balances() == {"alice": 30}  # the payment under the threshold went through

    text = await starter("status", run_id, env=cli_env)
    assert text.code == 4
    assert f"waiting on you: {pending['reason']}" in text.out
    assert f"request {pending['request_id']} (approval), step 2, tool post_entry" in text.out

    listed = await starter("pending", "--json", env=cli_env)
    assert listed.code == 0, listed
    rows = {row["run_id"]: row["pending"] for row in json.loads(listed.out)}
    assert rows[run_id]["request_id"] == pending["request_id"]

    approved = await starter("approve", run_id, "--approver", "ops@example.com", env=cli_env)
    assert approved.code == 0, approved
    assert approved.out.strip() == f"accepted: approve for {pending['request_id']}"
    final = await outcome(dev_client.get_workflow_handle(run_id, result_type=RunReport))
    assert final.status == "DONE" and final.verified
    assert [(d.choice, d.approver) for d in final.decisions] == [("approve", "ops@example.com")]
    assert store.balances() == {"alice": 30, "zed": 500}

    trail = await starter("audit", run_id, env=cli_env)
    entries = [json.loads(line) for line in trail.out.splitlines()]
    assert [(e["action"], e["target"], e["outcome"]) for e in entries] == [
        ("tool_call", "post_entry", "ok"),
        ("decision", pending["request_id"], "approve"),
        ("tool_call", "post_entry", "ok"),
    ]
    assert entries[1]["actor"] == "ops@example.com"

    again = await starter("approve", run_id, env=cli_env)
    refused(again, f"run {run_id!r} is not waiting on a decision")
    listed = await starter("pending", "--json", env=cli_env)
    assert run_id not in {row["run_id"] for row in json.loads(listed.out)}


async def test_refusals_change_nothing_then_reject_compensates(
    cli_env: dict, dev_client: Client
) -> None:
    run_id, report = await start_gated(cli_env)
    request = report["pending"]["request_id"]
    bad_edit = await starter(
        "decide",
        run_id,
        "--choice",
        "edit",
        "--args",
        '{"account": "zed", "amount": "lots"}',
        env=cli_env,
    )
    refused(bad_edit, "edited arguments do not fit post_entry")
    not_offered = await starter("decide", run_id, "--choice", "retry", env=cli_env)
    refused(not_offered, "choice 'retry' is not offered for")
    wrong_request = await starter("approve", run_id, "--request", "nope", env=cli_env)
    refused(wrong_request, "nope")
    not_json = await starter("decide", run_id, "--choice", "edit", "--args", "{", env=cli_env)
    assert not_json.code == 1 and "--args is not JSON" in not_json.err
    after = await status_of(run_id, cli_env)
    assert (after["status"], after["pending"]["request_id"], after["decisions"]) == (
        "WAITING_ON_YOU",
        request,
        [],
    )

    rejected = await starter("reject", run_id, "--reason", "too much", env=cli_env)
    assert rejected.code == 0, rejected
    final = await outcome(dev_client.get_workflow_handle(run_id, result_type=RunReport))
    assert final.status == "NOT_DONE"
    assert final.reason.startswith("step 2 'Pay zed 500' rejected: too much")
    assert store.balances() == {"alice": 0}  # the first payment was reversed
    unknown = await starter("approve", "no-such-run", env=cli_env)
    assert unknown.code == 1 and "no run with id 'no-such-run'" in unknown.err


async def test_waits_through_a_sigkill_and_a_signal_sent_with_no_worker(
    dev_client: Client, tmp_path: Path
) -> None:
    db = tmp_path / "ledger.sqlite"
    env = {
        "TEMPORAL_ADDRESS": dev_address(dev_client),
        "KEEL_TASK_QUEUE": f"humans-{uuid.uuid4().hex[:8]}",
        "KEEL_LEDGER_DB": str(db),
        "KEEL_STORE_DIR": str(tmp_path / "blobs"),
        "KEEL_STICKY_TIMEOUT": "1",
    }
    first = WorkerProcess(env, tmp_path / "worker1.log", "--tools", "examples.ledger")
    second = WorkerProcess(env, tmp_path / "worker2.log", "--tools", "examples.ledger")
    await first.start()
    try:
        run_id, report = await start_gated(env)
        await first.kill()  # SIGKILL while the run waits: the request lives in the server
        during = await status_of(run_id, env)
        assert during["pending"]["request_id"] == report["pending"]["request_id"]
        by_update = await starter("approve", run_id, env=env | {"KEEL_DECISION_TIMEOUT": "1"})
        assert by_update.code == 7, by_update  # not confirmed, and not refused: it may apply
        assert "not confirmed: no worker answered within 1 s" in by_update.err
        sent = await starter("approve", run_id, "--signal", env=env)
        assert sent.code == 7, sent
        assert "as a signal, not confirmed" in sent.err
        assert (await status_of(run_id, env))["status"] == "WAITING_ON_YOU"  # nobody applied it
        await second.start()
        final = await outcome(dev_client.get_workflow_handle(run_id, result_type=RunReport))
    finally:
        await first.stop()
        await second.stop()
    assert final.status == "DONE", final.reason
    # Whichever arrives first is applied (the update may have been held for the new worker);
    # the other is refused as a duplicate: one decision, one payment.
    assert [d.choice for d in final.decisions] == ["approve"]
    rows = ledger_rows(db, "SELECT account, amount FROM entries ORDER BY account")
    assert rows == [("alice", 30), ("zed", 500)]  # each payment exactly once


async def test_pending_request_survives_a_dev_server_restart(tmp_path: Path) -> None:
    port = free_port_pair()
    env = {
        "TEMPORAL_ADDRESS": f"localhost:{port}",
        "KEEL_TEMPORAL_DIR": str(tmp_path / "temporal"),
        "KEEL_LEDGER_DB": str(tmp_path / "ledger.sqlite"),
        "KEEL_STORE_DIR": str(tmp_path / "blobs"),
    }
    worker = WorkerProcess(env, tmp_path / "worker.log", "--tools", "examples.ledger")
    try:
        assert (await run("./temporal-dev", "up", env=env)).code == 0
        await worker.start()
        run_id, report = await start_gated(env)
        await worker.stop()
        assert (await run("./temporal-dev", "down", env=env)).code == 0
        assert (await run("./temporal-dev", "up", env=env)).code == 0
        after = await status_of(run_id, env)
        assert after["status"] == "WAITING_ON_YOU"
        assert after["pending"] == report["pending"]
        listed = await starter("pending", "--json", env=env)
        assert [row["run_id"] for row in json.loads(listed.out)] == [run_id]
        await worker.start()
        approved = await starter("approve", run_id, env=env)
        assert approved.code == 0, approved

        async def done() -> bool:
            return (await status_of(run_id, env))["status"] == "DONE"

        await wait_until(done, timeout=60, every=0.25)
        client = await Client.connect(
            env["TEMPORAL_ADDRESS"], data_converter=pydantic_data_converter
        )
        assert await replay_all(client, [(run_id, None)]) == 1
    finally:
        await worker.stop()
        await run("./temporal-dev", "down", env=env)


async def test_show_a_timeline_while_waiting_and_when_finished(
    cli_env: dict, dev_client: Client
) -> None:
    run_id, report = await start_gated(cli_env)
    waiting = await starter("show", run_id, "--json", env=cli_env)
    assert waiting.code == 0, waiting
    entries = json.loads(waiting.out)
    kinds = [(e["kind"], e["name"], e["step"], e["outcome"]) for e in entries]
    assert kinds[0] == ("run", "started", None, "ok")
    assert ("step", "post_entry", 1, "ok") in kinds
    assert kinds[-1][0] == "wait" and kinds[-1][3] == "running"  # the approval, still open
    assert not [k for k in kinds if k[0] == "run" and k[1] == "finished"]

    await starter("approve", run_id, "--approver", "ops", env=cli_env)
    await outcome(dev_client.get_workflow_handle(run_id))
    shown = await starter("show", run_id, env=cli_env)
    assert shown.code == 0, shown
    lines = shown.out.splitlines()
    assert lines[0].startswith(f"run {run_id}: ")
    decision = next(line for line in lines if " decision " in line)
    assert f"approve {report['pending']['request_id']} by ops" in decision
    step2 = next(line for line in lines if " step " in line and "    2  post_entry" in line)
    assert step2.split()[-1] == "ok"
    assert "answered" in next(line for line in lines if " wait " in line)
    assert lines[-1].split()[1:3] == ["run", "finished"] and " DONE " in lines[-1]
    assert len([line for line in lines if " check " in line]) == 2  # alice and zed received

    unknown = await starter("show", "no-such-run", env=cli_env)
    assert unknown.code == 1
    assert unknown.err.strip() == "starter.py: error: no run with id 'no-such-run'"
