"""starter.py as a user runs it: outcomes and exit codes, and one-line errors for bad input."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.worker import Worker

import examples.ledger as ledger
from examples.ledger import store
from keel import KeelPlugin
from keel.activities import Catalog
from keel.devserver import temporal_binary
from keel.runs import get_report, outcome
from keel.shared.errors import RunNotFound
from tests.conftest import dev_address, keel_worker
from tests.processes import Result, run, spawn, starter


@pytest_asyncio.fixture
async def cli_env(dev_client: Client, ledger_db: Path) -> AsyncIterator[dict[str, str]]:
    # The worker runs in this process (ledger_db points its tools at a fresh ledger); starter.py
    # runs in a subprocess, as a user would run it.
    async with keel_worker(dev_client, Catalog.from_modules([ledger])) as queue:
        yield {"TEMPORAL_ADDRESS": dev_address(dev_client), "KEEL_TASK_QUEUE": queue}


def write_plan(tmp_path: Path, plan: object) -> Path:
    path = tmp_path / f"plan-{uuid.uuid4().hex[:6]}.json"
    path.write_text(plan if isinstance(plan, str) else json.dumps(plan))
    return path


def pay_plan(account: str, amount: int, expected: int, pause_s: float = 0) -> dict:
    return {
        "goal": f"pay {account}",
        "steps": [
            {
                "title": f"Pay {account}",
                "tool": "post_entry",
                "args": {"account": account, "amount": amount, "pause_s": pause_s},
            }
        ],
        "acceptance": [
            {
                "criterion": f"{account} got {expected}",
                "check": "run_posted",
                "args": {"account": account, "expected": expected},
            }
        ],
    }


def one_line_error(result: Result, expected: str) -> None:
    assert result.code == 1, result
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("starter.py: error: "), result.err
    assert expected in lines[0], lines[0]


async def test_plan_run_done_then_status(cli_env: dict, tmp_path: Path) -> None:
    run_id = f"cli-{uuid.uuid4().hex[:8]}"
    plan = write_plan(tmp_path, pay_plan("alice", 30, 30))
    result = await starter(
        "run", "--plan", str(plan), "--id", run_id, "--wait", "--json", env=cli_env
    )
    assert result.code == 0, result
    report = json.loads(result.out)
    assert (report["run_id"], report["status"], report["verified"]) == (run_id, "DONE", True)
    assert [(s["index"], s["tool"], s["done"], s["attempts"]) for s in report["steps"]] == [
        (1, "post_entry", True, 1)
    ]
    assert report["acceptance"] == [
        {
            "criterion": "alice got 30",
            "check": "run_posted",
            "args": {"account": "alice", "expected": 30},
            "passed": True,
            "detail": "alice: 30 posted, 30 expected",
        }
    ]
    status = await starter("status", run_id, env=cli_env)
    assert status.code == 0
    assert f"run {run_id}  DONE" in status.out and "[x] 1. Pay alice" in status.out


async def test_not_done_has_its_own_exit_code(cli_env: dict, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, pay_plan("bob", 5, 6))
    result = await starter("run", "--plan", str(plan), "--wait", env=cli_env)
    assert result.code == 3, result
    assert "NOT_DONE" in result.out and "acceptance failed: bob got 6" in result.out


async def test_agent_run_with_the_scripted_model(cli_env: dict, tmp_path: Path) -> None:
    out = tmp_path / "statement.json"
    goal = f"Pay alice 30 and bob 20, then write the statement to {out}"
    result = await starter("run", "ledger-clerk", "--goal", goal, "--wait", "--json", env=cli_env)
    assert result.code == 0, result
    report = json.loads(result.out)
    assert report["status"] == "DONE" and report["files_touched"] == [str(out)]
    assert json.loads(out.read_text()) == {"alice": 30, "bob": 20}


async def test_cancel_a_running_run(cli_env: dict, tmp_path: Path, dev_client: Client) -> None:
    run_id = f"cli-{uuid.uuid4().hex[:8]}"
    plan = pay_plan("carl", 1, 1, pause_s=5)
    plan["steps"] *= 3
    path = write_plan(tmp_path, plan)
    started = await starter("run", "--plan", str(path), "--id", run_id, env=cli_env)
    assert started.code == 0 and run_id in started.out
    again = await starter("run", "--plan", str(path), "--id", run_id, env=cli_env)
    one_line_error(again, f"a run with id '{run_id}' is already running")
    cancelled = await starter("cancel", run_id, env=cli_env)
    assert cancelled.code == 0, cancelled
    await outcome(dev_client.get_workflow_handle(run_id))
    status = await starter("status", run_id, "--json", env=cli_env)
    assert status.code == 3
    assert json.loads(status.out)["reason"] == "cancelled before the plan finished"
    closed = await starter("cancel", run_id, env=cli_env)
    assert closed.code == 6 and "Traceback" not in closed.err, closed
    assert f"refused: run '{run_id}' has already ended (NOT_DONE); nothing to cancel" in closed.err


async def test_status_of_a_terminated_run_rebuilds_its_steps_and_names_uncompensated_writes(
    cli_env: dict, tmp_path: Path, dev_client: Client
) -> None:
    run_id = f"cli-{uuid.uuid4().hex[:8]}"
    plan = pay_plan("dora", 7, 7)
    plan["steps"].append(pay_plan("dora", 1, 1, pause_s=3)["steps"][0])
    started = await starter(
        "run", "--plan", str(write_plan(tmp_path, plan)), "--id", run_id, env=cli_env
    )
    assert started.code == 0, started
    handle = dev_client.get_workflow_handle(run_id)
    for _ in range(400):  # until step 2 has paid and pauses before it reports
        if store.balances().get("dora") == 8:
            break
        await asyncio.sleep(0.05)
    await handle.terminate(reason="operator pulled the plug")
    status = await starter("status", run_id, "--json", env=cli_env)
    assert status.code == 3, status
    report = json.loads(status.out)
    assert report["reason"].startswith("run terminated: operator pulled the plug")
    assert report["reason"].endswith(
        "; writes not compensated: step 1 post_entry, "
        "step 2 post_entry (in flight when the run ended: it may have written)"
    )
    assert [(s["index"], s["tool"], s["done"]) for s in report["steps"]] == [
        (1, "post_entry", True),
        (2, "post_entry", False),
    ]
    text = await starter("status", run_id, env=cli_env)
    assert "[x] 1." in text.out and "[ ] 2." in text.out


async def test_run_wait_with_no_worker_says_so_and_keeps_waiting(
    dev_client: Client, ledger_db: Path, tmp_path: Path
) -> None:
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    env = {"TEMPORAL_ADDRESS": dev_address(dev_client), "KEEL_TASK_QUEUE": queue}
    plan = write_plan(tmp_path, pay_plan("emil", 3, 3))
    proc = await spawn(sys.executable, "starter.py", "run", "--plan", str(plan), "--wait", env=env)
    assert proc.stderr is not None
    # A condition, not a sleep: the line arrives when the starter has looked for a worker.
    said = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
    assert said.startswith(f"starter.py: no worker polls task queue '{queue}'; the run waits")
    assert proc.returncode is None  # and it keeps waiting
    plugin = KeelPlugin(Catalog.from_modules([ledger]))
    async with Worker(dev_client, task_queue=queue, plugins=[plugin]):
        code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0  # the run finished once a worker came


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["run", "nobody", "--goal", "x"],
            "unknown agent 'nobody' (known: ledger-agent, ledger-clerk, memory-consolidator)",
        ),
        (["run", "ledger-clerk"], "agent 'ledger-clerk' needs a --goal"),
        (["run"], "name an agent or give --plan FILE.json"),
        (["run", "--plan", "/nonexistent/plan.json"], "cannot read plan file"),
        (["status", "no-such-run"], "no run with id 'no-such-run'"),
        (["cancel", "no-such-run"], "no run with id 'no-such-run'"),
    ],
)
async def test_bad_input_is_one_line(cli_env: dict, args: list[str], expected: str) -> None:
    one_line_error(await starter(*args, env=cli_env), expected)


async def test_an_oversized_goal_or_argument_is_refused_before_starting(
    cli_env: dict, tmp_path: Path
) -> None:
    goal = "Pay alice 1 " + "x" * 16_000
    one_line_error(
        await starter("run", "ledger-clerk", "--goal", goal, env=cli_env),
        "goal: String should have at most 16000 characters",
    )
    plan = pay_plan("alice", 1, 1)
    plan["steps"][0]["args"]["memo"] = "m" * 300_000
    one_line_error(
        await starter("run", "--plan", str(write_plan(tmp_path, plan)), env=cli_env),
        "step 1: arguments of 'post_entry' are 300",
    )


async def test_pending_without_the_status_attribute_says_so(ts_client: Client) -> None:
    # The time-skipping server has no KeelStatus attribute (nor an operator service to list it).
    env = {"TEMPORAL_ADDRESS": dev_address(ts_client)}
    one_line_error(
        await starter("pending", env=env),
        "the namespace has no KeelStatus search attribute, so waiting runs cannot be listed; "
        "register it: temporal operator search-attribute create --name KeelStatus",
    )


async def test_a_wrong_namespace_is_named_not_taken_for_a_missing_run(cli_env: dict) -> None:
    elsewhere = cli_env | {"TEMPORAL_NAMESPACE": "no-such-namespace"}
    one_line_error(
        await starter("status", "some-run", env=elsewhere),
        "amespace no-such-namespace is not found (check TEMPORAL_NAMESPACE)",
    )


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        ("{not json", "does not validate: value: Invalid JSON"),
        ({"goal": "g", "steps": []}, "steps: List should have at least 1 item"),
        (
            {"goal": "g", "steps": [{"title": "t", "tool": "post_entry", "argz": {}}]},
            "steps.0.argz: Extra inputs are not permitted",
        ),
        (
            {"goal": "g", "steps": [{"title": "t", "tool": "ghost"}]},
            "plan refused: step 1: unknown tool 'ghost'",
        ),
        (
            {"goal": "g", "steps": [{"title": "t", "tool": "post_entry", "args": {"account": 1}}]},
            "plan refused: step 1: invalid arguments for 'post_entry'",
        ),
    ],
)
async def test_bad_plans_run_nothing(
    cli_env: dict, tmp_path: Path, dev_client: Client, plan: object, expected: str
) -> None:
    """A plan that does not parse starts nothing; one the worker refuses (the starter has no
    tool code to check it) ends NOT_DONE with nothing run, and its id starts again as new."""
    run_id = f"cli-{uuid.uuid4().hex[:8]}"
    path = write_plan(tmp_path, plan)
    one_line_error(await starter("run", "--plan", str(path), "--id", run_id, env=cli_env), expected)
    if "plan refused" not in expected:
        with pytest.raises(RunNotFound):
            await get_report(dev_client, run_id)
        return
    refused = await get_report(dev_client, run_id)
    assert (refused.status, refused.refused) == ("NOT_DONE", True)
    assert refused.reason.startswith(expected)
    assert refused.used.tool_calls == 0 and not refused.saga
    good = str(write_plan(tmp_path, pay_plan("olga", 2, 2)))
    again = await starter("run", "--plan", good, "--id", run_id, "--wait", env=cli_env)
    assert again.code == 0, again
    assert store.balance("olga") == 2


async def test_unreachable_server(tmp_path: Path) -> None:
    env = {"TEMPORAL_ADDRESS": "127.0.0.1:1"}
    one_line_error(await starter("status", "x", env=env), "cannot reach Temporal at 127.0.0.1:1")
    plan = write_plan(tmp_path, pay_plan("d", 1, 1))
    one_line_error(
        await starter("run", "--plan", str(plan), env=env), "cannot reach Temporal at 127.0.0.1:1"
    )


async def test_an_id_that_exists_is_refused_and_a_rerun_repeats_no_write(
    cli_env: dict, tmp_path: Path
) -> None:
    """Issue 13, item 4: re-using a run id never repeats a write by accident."""
    run_id = f"cli-{uuid.uuid4().hex[:8]}"
    path = str(write_plan(tmp_path, pay_plan("rita", 7, 7)))
    first = await starter("run", "--plan", path, "--id", run_id, "--wait", env=cli_env)
    assert first.code == 0, first
    again = await starter("run", "--plan", path, "--id", run_id, "--wait", env=cli_env)
    one_line_error(again, f"run {run_id!r} exists (DONE")
    rerun = await starter("run", "--plan", path, "--id", run_id, "--rerun", "--wait", env=cli_env)
    assert rerun.code == 0, rerun
    assert store.balance("rita") == 7  # the write's key had completed: not done again
    found = re.search(r"execution (\S+) \(COMPLETED\)", rerun.err)
    assert found, rerun.err
    earlier = await starter("status", run_id, "--execution", found[1], "--json", env=cli_env)
    assert json.loads(earlier.out)["status"] == "DONE", earlier
    fresh = await starter(
        "run", "--plan", path, "--id", run_id, "--rerun", "--new-keys", "--wait", env=cli_env
    )
    assert fresh.code == 3 and store.balance("rita") == 14  # asked for: the write repeats


async def test_a_reader_that_goes_away_ends_the_starter_quietly(cli_env: dict) -> None:
    """`starter.py ... | head`: the pipe's reader is gone before the starter writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await spawn(sys.executable, "starter.py", "pending", env=cli_env, stdout=write_end)
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode, err.decode()) == (141, "")


async def test_temporals_list_view_tells_done_from_not_done(cli_env: dict, tmp_path: Path) -> None:
    """Issue 15, part 5: `temporal workflow list` (and the web UI's list) shows a NOT_DONE run
    as Failed, a DONE one as Completed; status and the report stay Keel's."""
    done, not_done = f"cli-{uuid.uuid4().hex[:8]}", f"cli-{uuid.uuid4().hex[:8]}"
    good = write_plan(tmp_path, pay_plan("lou", 4, 4))
    unverified = write_plan(tmp_path, pay_plan("lou", 4, 4) | {"acceptance": []})
    assert (
        await starter("run", "--plan", str(good), "--id", done, "--wait", env=cli_env)
    ).code == 0
    failed = await starter(
        "run", "--plan", str(unverified), "--id", not_done, "--wait", env=cli_env
    )
    assert failed.code == 3, failed
    listed = await run(
        temporal_binary(),
        "workflow",
        "list",
        "--address",
        cli_env["TEMPORAL_ADDRESS"],
        "--query",
        f"WorkflowId IN ('{done}', '{not_done}')",
        env={},
    )
    rows = {line.split()[1]: line.split()[0] for line in listed.out.splitlines()[1:] if line}
    assert rows == {done: "Completed", not_done: "Failed"}, listed
    status = await starter("status", not_done, "--json", env=cli_env)
    report = json.loads(status.out)
    assert (status.code, report["status"]) == (3, "NOT_DONE")
    assert "nothing verified the result" in report["reason"]
