"""Background jobs (issue 17): a registry file synced to Temporal Schedules, on the dev server
with second-level intervals. Each test names its jobs uniquely and deletes its schedules at the
end (the dev server is shared, and its runs are replayed at the end of the session)."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleSpec,
    ScheduleState,
    WorkflowExecutionStatus,
)
from temporalio.contrib.pydantic import pydantic_data_converter

from examples import ledger
from keel.activities.catalog import Catalog, Declared
from keel.activities.jobs import recent_runs
from keel.jobs import job_rows, load_registry, managed, sync
from keel.runs import get_report
from keel.shared.errors import RegistryError
from keel.workflows.contracts import NamedRoutes, Route, Routes, RunReport, schedule_id
from tests.conftest import dev_address, history_holds, keel_worker, replay_all, wait_until
from tests.model_server import ModelServer, Reply, openai_call
from tests.processes import WorkerProcess, run, starter, worker_env
from tests.test_crash_resume import ledger_rows
from tests.test_models import KEY, KEY_ENV, clerk, openai_ref
from tests.test_temporal_dev import free_port_pair

CATALOG = Catalog.from_modules([ledger])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def registry_file(tmp_path: Path, text: str) -> Path:
    """The registry, under a registry name of its own unless it names one: a test's sync
    never deletes another test's jobs on the shared server."""
    path = tmp_path / "jobs.toml"
    own = "" if "registry =" in text else f'registry = "{unique("test")}"\n'
    path.write_text(own + text)
    return path


@asynccontextmanager
async def jobs_served(client: Client, path: Path, *agents: Declared) -> AsyncIterator[None]:
    """The file's jobs on the server, and a worker serving their runs, for the test's length;
    the schedules are deleted after."""
    registry = load_registry(path)
    async with keel_worker(client, CATALOG, *agents) as queue:
        await sync(client, registry, queue)
        try:
            yield
        finally:
            for name in registry.jobs:
                await client.get_schedule_handle(schedule_id(name)).delete()


async def closed_runs(client: Client, job: str, count: int, timeout: float = 60) -> list[RunReport]:
    """The job's first `count` runs to close (notifications sent), oldest first."""

    async def ended() -> list[RunReport] | None:
        closed = []
        for run_id in reversed(await recent_runs(client, job) or []):
            described = await client.get_workflow_handle(run_id).describe()
            if described.status != WorkflowExecutionStatus.RUNNING:
                closed.append(await get_report(client, run_id))
        return closed[:count] if len(closed) >= count else None

    return await wait_until(ended, timeout, every=0.2)


async def test_each_firing_is_an_isolated_run_unless_the_job_asks_for_the_last_summary(
    dev_client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    alone, told = unique("alone"), unique("told")
    with ModelServer() as server:
        numbers = itertools.count(1)

        def finish(body: dict[str, Any]) -> Reply:
            return openai_call("finish", summary=f"marker-{next(numbers):03d}-end")

        server.script("/openai/v1/chat/completions", finish)
        agent = clerk(openai_ref(server), name="job-clerk")
        path = registry_file(
            tmp_path,
            f"""
[jobs.{alone}]
agent = "job-clerk"
goal = "check the ledger, alone"
every = "2s"

[jobs.{told}]
agent = "job-clerk"
goal = "check the ledger, told"
every = "2s"
previous_run = true
""",
        )
        async with jobs_served(dev_client, path, agent):
            first = await closed_runs(dev_client, alone, 3)
            later = await closed_runs(dev_client, told, 3)
        bodies = [json.dumps(seen.body) for seen in server.seen]
    assert all(r.status == "DONE" and r.job == alone for r in first), first
    assert len({r.run_id for r in first}) == 3  # each firing its own workflow id
    assert all(r.run_id.startswith(f"job.{alone}-") for r in first)
    markers = [(body, re.findall(r"marker-\d{3}-end", body)) for body in bodies]
    # Nothing of one run reaches another's model input...
    assert all(not found for body, found in markers if "alone" in body)
    # ...except the last summary, when the job asks for it, and then only that.
    told_runs = [(body, found) for body, found in markers if "told" in body]
    told_summaries = {r.summary for r in later}
    assert len(told_runs) >= 3
    assert sum(1 for _, found in told_runs if found) >= 2
    for body, found in told_runs:
        assert len(found) <= 1 and set(found) <= told_summaries | {"-"}, body
        assert bool(found) == ("previous run reported" in body)


async def test_a_job_takes_model_routes_the_worker_offers_by_name(
    dev_client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    routed, misrouted = unique("routed"), unique("misrouted")
    with ModelServer() as server:
        server.script("/openai/v1/chat/completions", lambda _: openai_call("finish", summary="own"))
        server.script(
            "/other/v1/chat/completions", lambda _: openai_call("finish", summary="named")
        )
        agent = clerk(openai_ref(server), name="routed-clerk")
        other = openai_ref(server, base_url=server.url + "/other/v1")
        named = NamedRoutes(name="other", routes=Routes(act=Route(models=(other,))))
        path = registry_file(
            tmp_path,
            f"""
[jobs.{routed}]
agent = "routed-clerk"
goal = "check"
every = "1h"
routes = "other"

[jobs.{misrouted}]
agent = "routed-clerk"
goal = "check"
every = "1h"
routes = "nope"
""",
        )
        async with jobs_served(dev_client, path, agent, named):
            for name in (routed, misrouted):
                await dev_client.get_schedule_handle(schedule_id(name)).trigger()
            (done,) = await closed_runs(dev_client, routed, 1)
            (refused,) = await closed_runs(dev_client, misrouted, 1)
        assert server.requests("/openai/v1/chat/completions") == []
        assert len(server.requests("/other/v1/chat/completions")) == 1
    assert done.status == "DONE" and done.summary == "named", done.reason
    assert refused.refused and "unknown routes 'nope' (known: other)" in refused.reason


async def test_sync_is_idempotent_and_leaves_other_schedules_alone(
    dev_client: Client, tmp_path: Path
) -> None:
    one, two = unique("one"), unique("two")
    foreign = unique("foreign")
    # A schedule Keel did not make, under Keel's own id prefix: never touched.
    await dev_client.create_schedule(
        schedule_id(foreign),
        Schedule(
            action=ScheduleActionStartWorkflow("Nothing", id=foreign, task_queue="nowhere"),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(hours=1))]),
            state=ScheduleState(paused=True),
        ),
    )
    registry = "reg-" + uuid.uuid4().hex[:6]
    text = f"""registry = "{registry}"
[jobs.{one}]
agent = "ledger-clerk"
goal = "pay alice 1"
every = "1h"

[jobs.{two}]
agent = "ledger-clerk"
goal = "pay bob 1"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
enabled = false
"""
    path = registry_file(tmp_path, text)
    try:
        dry = await sync(dev_client, load_registry(path), "q", dry_run=True)
        assert [(c.job, c.action) for c in dry] == [(one, "create"), (two, "create")]
        assert await recent_runs(dev_client, one) is None  # a dry run creates nothing
        made = await sync(dev_client, load_registry(path), "q")
        assert [c.action for c in made] == ["create", "create"]
        again = await sync(dev_client, load_registry(path), "q")
        assert [c.action for c in again] == ["unchanged", "unchanged"]
        paused = await dev_client.get_schedule_handle(schedule_id(two)).describe()
        assert paused.schedule.state.paused
        # An edit updates that job only; a job dropped from the file is deleted (once the
        # server's list shows it: visibility is eventually consistent).
        text = text.replace('goal = "pay alice 1"', 'goal = "pay alice 2"')
        path.write_text(text)
        edited = await sync(dev_client, load_registry(path), "q")
        assert [(c.job, c.action) for c in edited] == [(one, "update"), (two, "unchanged")]
        await wait_until(lambda: listed(dev_client, registry, {one, two}))
        path.write_text(text.split(f"[jobs.{two}]")[0])
        dropped = await sync(dev_client, load_registry(path), "q")
        assert [(c.job, c.action) for c in dropped] == [(one, "unchanged"), (two, "delete")]
        assert await recent_runs(dev_client, two) is None
        foreign_schedule = await dev_client.get_schedule_handle(schedule_id(foreign)).describe()
        assert foreign_schedule.schedule.state.paused  # untouched
        # A job that would take over the foreign schedule is refused, naming it.
        path.write_text(text.split(f"[jobs.{two}]")[0].replace(one, foreign))
        with pytest.raises(RegistryError, match=f"job '{foreign}'.*not this registry's"):
            await sync(dev_client, load_registry(path), "q")
    finally:
        for name in (one, two, foreign):
            handle = dev_client.get_schedule_handle(schedule_id(name))
            with suppress(Exception):  # the test deleted it, or never made it
                await handle.delete()


async def connect_to(env: dict[str, str]) -> Client:
    return await Client.connect(env["TEMPORAL_ADDRESS"], data_converter=pydantic_data_converter)


async def listed(client: Client, registry: str, names: set[str]) -> bool:
    return set(await managed(client, registry)) == names


def test_bad_registry_entries_are_refused_with_the_job_and_field(tmp_path: Path) -> None:
    base = 'agent = "a"\ngoal = "g"\n'
    cases = {
        base + 'every = "5x"': "job 'x': field 'every': '5x' is not a duration",
        base + 'every = "5s"\ncolour = "red"': "job 'x': unknown key 'colour'",
        base + 'every = "5s"\ncron = "* * * * *"': "job 'x': give exactly one of cron",
        base + 'every = "5s"\nmode = "dry"': "job 'x': field 'mode'",
        base + 'every = "5s"\ntimezone = "Mars/Base"': "field 'timezone': 'Mars/Base' is not",
        base + 'every = "5s"\nblocked_by = ["x"]': "a cycle \\(x -> x\\)",
        base + 'every = "5s"\nblocked_by = ["y"]': "field 'blocked_by': no job 'y'",
        base + 'every = "5s"\nbudget = {max_tool_calls = -1}': "field 'budget.max_tool_calls'",
        base + 'every = "5s"\n[[jobs.x.notify]]\nwebhook = "ftp://h"': "field 'notify'.*http",
        base + 'every = "5s"\nplan = "missing.json"': "field 'plan': cannot read",
        'goal = "g"\nevery = "5s"': "give the agent",
    }
    for body, message in cases.items():
        path = registry_file(tmp_path, f"[jobs.x]\n{body}\n")
        with pytest.raises(RegistryError, match=message):
            load_registry(path)
    with pytest.raises(RegistryError, match="job 'Bad Name'"):
        load_registry(registry_file(tmp_path, '[jobs."Bad Name"]\nagent="a"\ngoal="g"\nevery="1s"'))
    with pytest.raises(RegistryError, match="unknown top-level"):
        load_registry(registry_file(tmp_path, "[stuff]\n"))


async def test_draft_writes_nothing_and_a_blocked_job_is_skipped_with_its_reason(
    dev_client: Client, tmp_path: Path, ledger_db: Path
) -> None:
    draft, broken, waiting = unique("draft"), unique("broken"), unique("waits")
    path = registry_file(
        tmp_path,
        f"""
[jobs.{draft}]
agent = "ledger-clerk"
goal = "Pay alice 30 and bob 20, then write the statement to {tmp_path}/statement.json"
every = "1h"
mode = "draft"

[jobs.{broken}]
agent = "nobody-serves-this"
goal = "anything"
every = "1h"

[jobs.{waiting}]
agent = "ledger-clerk"
goal = "Pay carol 5"
every = "1h"
blocked_by = ["{broken}"]
""",
    )
    async with jobs_served(dev_client, path):
        for name in (draft, broken):
            await dev_client.get_schedule_handle(schedule_id(name)).trigger()
        (drafted,) = await closed_runs(dev_client, draft, 1)
        await closed_runs(dev_client, broken, 1)
        await dev_client.get_schedule_handle(schedule_id(waiting)).trigger()
        (skipped,) = await closed_runs(dev_client, waiting, 1)
        rows = {r.job: r for r in await job_rows(dev_client, load_registry(path))}
    assert drafted.status == "NOT_DONE" and drafted.draft
    assert drafted.would_write == 3  # two payments and the statement
    assert [s.drafted for s in drafted.steps] == [True, True, True]
    assert drafted.steps[0].args["account"] == "alice" and drafted.steps[0].args["amount"] == 30
    assert "draft: 3 write(s) recorded" in drafted.reason
    assert ledger_rows(ledger_db, "SELECT * FROM entries") == []  # nothing written
    assert not (tmp_path / "statement.json").exists()
    assert drafted.compensations == []  # nothing to undo
    assert skipped.status == "NOT_DONE" and skipped.steps == []
    assert skipped.blocked.startswith(f"blocked by {broken}'s last run job.{broken}-")
    assert "NOT_DONE: agent refused" in skipped.blocked
    assert skipped.reason == f"skipped: {skipped.blocked}"
    assert rows[waiting].state == "blocked" and broken in rows[waiting].why
    assert rows[draft].state == "draft" and rows[draft].mode == "draft"
    last = rows[draft].last_run
    assert last is not None and last.status == "NOT_DONE" and last.summary.startswith("draft: ")


async def test_webhooks_get_the_summary_and_a_failing_one_does_not_fail_the_run(
    dev_client: Client, tmp_path: Path, ledger_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_TEST_HOOK_TOKEN", "tok-3141")
    name = unique("hooked")
    with ModelServer() as hooks:
        hooks.script("/hook", lambda body: Reply(200, {"ok": True}))
        hooks.script("/broken", lambda body: Reply(500, {"error": "down"}))
        path = registry_file(
            tmp_path,
            f"""
[jobs.{name}]
agent = "ledger-clerk"
goal = "Pay alice 30 and then write the statement to {tmp_path}/out/s.json"
every = "1h"
output_dir = "reports"

[[jobs.{name}.notify]]
webhook = "{hooks.url}/hook"
headers = {{ Authorization = "Bearer ${{KEEL_TEST_HOOK_TOKEN}}" }}

[[jobs.{name}.notify]]
webhook = "{hooks.url}/broken"

[[jobs.{name}.notify]]
outbox = "outbox"
""",
        )
        async with jobs_served(dev_client, path):
            await dev_client.get_schedule_handle(schedule_id(name)).trigger()
            (report,) = await closed_runs(dev_client, name, 1, timeout=90)
        got = hooks.requests("/hook")
        broken = hooks.requests("/broken")
    assert report.status == "DONE", report.reason
    assert len(got) == 1
    assert got[0].headers["Authorization"] == "Bearer tok-3141"
    assert got[0].body["text"].startswith(f"job {name}: DONE: ")
    assert got[0].body["run_id"] == report.run_id and got[0].body["status"] == "DONE"
    assert len(broken) == 3  # bounded retries, then the run goes on
    states = {(n.channel.split(":")[0], n.ok) for n in report.notifications}
    assert states == {("webhook", True), ("webhook", False), ("outbox", True), ("output", True)}
    failed = next(n for n in report.notifications if not n.ok)
    assert "HTTP 500" in failed.error
    # The secret stays a reference: not in the report, not in the run's history.
    assert "tok-3141" not in report.model_dump_json()
    history = await dev_client.get_workflow_handle(report.run_id).fetch_history()
    assert history_holds(history, "${KEEL_TEST_HOOK_TOKEN}")  # the reference travels
    assert not history_holds(history, "tok-3141")  # the value does not
    outbox = sorted((tmp_path / "outbox").iterdir())
    assert [p.suffix for p in outbox] == [".json", ".md"]
    assert json.loads(outbox[0].read_text())["status"] == "DONE"
    written = json.loads((tmp_path / "reports" / f"{report.run_id}.json").read_text())
    assert written["status"] == "DONE" and written["run_id"] == report.run_id


async def test_schedules_survive_a_worker_sigkill_and_a_server_restart(tmp_path: Path) -> None:
    port = free_port_pair()
    env = worker_env(f"localhost:{port}", tmp_path, KEEL_TEMPORAL_DIR=str(tmp_path / "temporal"))
    name = unique("steady")
    path = registry_file(
        tmp_path,
        f"""
[jobs.{name}]
agent = "ledger-clerk"
goal = "Pay alice 1 and then write the statement to {tmp_path}/out/s.json"
every = "2s"
""",
    )
    worker = WorkerProcess(env, tmp_path / "worker.log", "--tools", "examples.ledger")
    try:
        assert (await run("./temporal-dev", "up", env=env)).code == 0
        synced_out = await starter("jobs", "sync", str(path), env=env)
        assert synced_out.code == 0 and f"create {name}" in synced_out.out, synced_out
        await worker.start()
        client = await Client.connect(
            env["TEMPORAL_ADDRESS"], data_converter=pydantic_data_converter
        )
        await closed_runs(client, name, 2)
        await worker.kill()
        assert (await run("./temporal-dev", "down", env=env)).code == 0
        assert (await run("./temporal-dev", "up", env=env)).code == 0
        client = await Client.connect(
            env["TEMPORAL_ADDRESS"], data_converter=pydantic_data_converter
        )
        before = set(await recent_runs(client, name) or [])
        await worker.start()

        async def fired_after_restart() -> list[str]:
            runs = await recent_runs(client, name) or []
            new = [r for r in runs if r not in before]
            reports = [await get_report(client, r) for r in new]
            return [r.run_id for r in reports if r.status == "DONE"]

        assert await wait_until(fired_after_restart)
        listed = await starter("jobs", "--file", str(path), "--json", env=env)
        (row,) = json.loads(listed.out)
        assert row["job"] == name and row["state"] in ("due", "running"), row
        everything: list[tuple[str, str | None]] = [
            (w.id, w.run_id) async for w in client.list_workflows()
        ]
        assert await replay_all(client, everything) == len(everything)
    finally:
        await worker.stop()
        await run("./temporal-dev", "down", env=env)


async def test_prune_spares_what_an_open_run_needs(
    dev_client: Client, tmp_path: Path, ledger_db: Path
) -> None:
    name = unique("gated")
    path = registry_file(
        tmp_path,
        f"""
[jobs.{name}]
agent = "ledger-clerk"
goal = "Pay alice 500 and then write the statement to {tmp_path}/s.json"
every = "1h"
output_dir = "reports"
""",
    )
    async with jobs_served(dev_client, path):
        await dev_client.get_schedule_handle(schedule_id(name)).trigger()

        async def waiting() -> str | None:
            runs = await recent_runs(dev_client, name) or []
            if runs and (await get_report(dev_client, runs[0])).status == "WAITING_ON_YOU":
                return runs[0]
            return None

        open_run = await wait_until(waiting)
        outbox = tmp_path / ".keel" / "outbox"

        async def notified() -> list[Path]:
            return list(outbox.glob(f"{open_run}.waiting.*"))

        await wait_until(notified)
        closed = f"job.{name}-2026-01-01T00:00:00Z"  # an old run's files, long closed
        for suffix in (".json", ".ended.20260101T000000000000.md"):
            (outbox / f"{closed}{suffix}").write_text("{}")
        old = time.time() - 3600
        for file in outbox.iterdir():
            os.utime(file, (old, old))
        env = {
            **worker_env(dev_address(dev_client), tmp_path),
            "KEEL_STORE_DIR": str(tmp_path / "blobs"),
        }
        dry = await starter(
            "prune", "--older-than", "10m", "--jobs", str(path), "--dry-run", env=env
        )
        assert "would remove 2 job files" in dry.out, dry
        pruned = await starter("prune", "--older-than", "10m", "--jobs", str(path), env=env)
        assert "removed 2 job files" in pruned.out and "kept 2 of open runs" in pruned.out
        left = sorted(p.name for p in outbox.iterdir())
        assert all(n.startswith(open_run) for n in left) and len(left) == 2
        await dev_client.get_workflow_handle(open_run).cancel()
