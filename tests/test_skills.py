"""Skills (issue 19): progressive loading of Agent Skills directories, a skill's tools offered
once it is loaded, its files read as the run loaded them (a skill edited mid-run changes
nothing for that run), and a worker SIGKILLed after a load: the loaded set and its tools
survive, and the load is not repeated."""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from keel.activities.catalog import Catalog
from keel.runs import outcome
from keel.shared.errors import CatalogError
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import AgentRunInput
from tests.conftest import dev_address, keel_worker
from tests.model_server import ModelServer, Reply, openai_call, openai_calls
from tests.processes import WorkerProcess, worker_env
from tests.test_models import KEY, KEY_ENV, clerk, openai_ref

COMPLETIONS = "/openai/v1/chat/completions"


def write_skill(
    root: Path, name: str, body: str, tools: str = "", files: dict[str, str] | None = None
) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "SKILL.md").write_text(
        f"---\nname: {name}\ndescription: Speak {name}; use it when asked to shout.\n---\n{body}\n"
    )
    if tools:
        (folder / "tools.py").write_text(textwrap.dedent(tools))
    for path, text in (files or {}).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text)
    return folder


LOUD_TOOLS = """
from keel import tool

@tool
def shout(text: str) -> str:
    '''Say it loudly.'''
    return text.upper() + "!"
"""


@pytest.fixture
def skills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("KEEL_STORE_DIR", str(tmp_path / "blobs"))
    root = tmp_path / "skills"
    write_skill(
        root,
        "loud-voice",
        "Always shout with the shout tool. Phrases are in reference/phrases.md.",
        LOUD_TOOLS,
        files={"reference/phrases.md": "hello there"},
    )
    for n in range(3):
        write_skill(root, f"quiet-{n}", f"Whisper number {n}.")
    return root


def read_resource(path: str) -> Reply:
    return openai_calls(("read_skill_resource", {"name": "loud-voice", "path": path}))


def catalog_with(root: Path) -> Catalog:
    catalog = Catalog.of()
    catalog.add_skills(root)
    return catalog


async def test_a_skill_loaded_mid_run_brings_its_body_and_tool(
    dev_client: Client, skills: Path
) -> None:
    answers = iter(
        [
            openai_calls(("load_skill", {"name": "loud-voice"})),
            "edit",  # the skill is edited on disk: the run must not see it
            openai_calls(
                ("read_skill_resource", {"name": "loud-voice", "path": "reference/phrases.md"})
            ),
            openai_calls(("read_skill_resource", {"name": "loud-voice", "path": "nope.md"})),
            openai_call("shout", text="hi"),
            openai_call("finish", summary="shouted"),
        ]
    )

    def answer(body: dict[str, Any]) -> Reply:
        reply = next(answers)
        if reply == "edit":
            (skills / "loud-voice" / "reference" / "phrases.md").write_text("EDITED")
            (skills / "loud-voice" / "SKILL.md").write_text("---\nname: x\n---\nEDITED")
            reply = next(answers)
        assert isinstance(reply, Reply)
        return reply

    with ModelServer() as server:
        server.script(COMPLETIONS, answer)
        agent = clerk(
            openai_ref(server), name="speaker", tools=(), skills=("loud-voice", "quiet-2")
        )
        async with keel_worker(dev_client, catalog_with(skills), agent) as queue:
            handle = await dev_client.start_workflow(
                AgentWorkflow.run,
                AgentRunInput(agent=clerk(name="speaker"), goal="greet loudly"),
                id=f"skill-{uuid.uuid4().hex[:6]}",
                task_queue=queue,
            )
            report = await outcome(handle)
        asked = [seen.body for seen in server.requests(COMPLETIONS)]
    assert report.status == "DONE", report.reason
    first_tools = {t["function"]["name"]: t for t in asked[0]["tools"]}
    # Before loading: the catalog only (names and descriptions), no body, no skill tool.
    assert "shout" not in first_tools
    catalog_text = first_tools["load_skill"]["function"]["description"]
    assert "loud-voice: Speak loud-voice" in catalog_text and "quiet-2" in catalog_text
    assert "quiet-0" not in catalog_text  # only the skills this agent may use
    assert "Always shout" not in json.dumps(asked[0])
    # After: the body is in the conversation, the tool is offered, files read as loaded.
    assert "Always shout with the shout tool" in json.dumps(asked[1]["messages"])
    assert "shout" in {t["function"]["name"] for t in asked[1]["tools"]}
    results = [m["content"] for m in asked[-1]["messages"] if m["role"] == "tool"]
    assert "hello there" in results[1]  # the snapshot, not the edited file
    assert "EDITED" not in json.dumps(asked[-1])
    assert (
        "no resource 'nope.md' in skill loud-voice; its resources: reference/phrases.md"
        in (results[2])
    )
    assert json.loads(results[3]) == "HI!"
    (loaded,) = report.skills
    assert loaded.name == "loud-voice" and loaded.tools == ["shout"]
    assert loaded.manifest.startswith("sha256:")


def test_bad_skills_are_refused_at_worker_start(tmp_path: Path) -> None:
    write_skill(tmp_path / "a", "Not-Lower", "x")
    with pytest.raises(CatalogError, match="name must be 1-64 lowercase"):
        catalog_with(tmp_path / "a")
    folder = write_skill(tmp_path / "b", "good", "x")
    (folder / "SKILL.md").write_text("---\nname: other\ndescription: d\n---\nbody")
    with pytest.raises(CatalogError, match="must match its directory"):
        catalog_with(tmp_path / "b")
    catalog = Catalog.of().including(clerk(name="s", skills=("ghost",), tools=()))
    with pytest.raises(CatalogError, match="skill 'ghost' is not offered here"):
        catalog.check()


async def test_a_worker_killed_after_a_load_resumes_with_the_skill_loaded(
    dev_client: Client, skills: Path, tmp_path: Path
) -> None:
    second_turn = threading.Event()
    release = threading.Event()

    def answer(body: dict[str, Any]) -> Reply:
        """By what the conversation holds, so a call retried after the crash answers alike."""
        said = json.dumps(body["messages"])
        if "Skill loud-voice loaded" not in said:
            return openai_calls(("load_skill", {"name": "loud-voice"}))
        if not second_turn.is_set():  # the load is recorded; the worker dies while this waits
            second_turn.set()
            release.wait(30)
        if "AFTER THE CRASH" not in said:
            return openai_call("shout", text="after the crash")
        return openai_call("finish", summary="done")

    with ModelServer() as server:
        server.script(COMPLETIONS, answer)
        module = tmp_path / "speaker_agent.py"
        module.write_text(
            textwrap.dedent(
                f"""
                from datetime import timedelta
                from keel import AgentSpec, ModelRef, Route, Routes, RetrySpec
                model = ModelRef(provider="openai", model="gpt-test",
                                 base_url="{server.url}/openai/v1", api_key_env="{KEY_ENV}",
                                 timeout=timedelta(seconds=5),
                                 retry=RetrySpec(max_attempts=5, initial_interval=0.2))
                speaker = AgentSpec(name="speaker", skills=("loud-voice",), unverified_ok=True,
                                    routes=Routes(act=Route(models=(model,))))
                """
            )
        )
        env = worker_env(dev_address(dev_client), tmp_path, **{KEY_ENV: KEY})
        queue = f"skills-{uuid.uuid4().hex[:6]}"
        args = ("--task-queue", queue, "--tools", str(module), "--skills", str(skills))
        first = WorkerProcess(env, tmp_path / "worker1.log", *args)
        second = WorkerProcess(env, tmp_path / "worker2.log", *args)
        await first.start()
        try:
            handle = await dev_client.start_workflow(
                AgentWorkflow.run,
                AgentRunInput(agent=clerk(name="speaker"), goal="greet loudly"),
                id=f"skill-crash-{uuid.uuid4().hex[:6]}",
                task_queue=queue,
            )
            await asyncio.to_thread(second_turn.wait, 60)
            await first.kill()
            release.set()
            await second.start()
            report = await outcome(handle)
        finally:
            release.set()
            await first.stop()
            await second.stop()
    assert report.status == "DONE", report.reason
    assert [s.name for s in report.skills] == ["loud-voice"]
    assert [s.result for s in report.steps] == ["AFTER THE CRASH!"]
    history = await handle.fetch_history()
    loads = [
        e
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "keel.load_skill"
    ]
    assert len(loads) == 1  # loaded once, before the crash; the new worker did not load again
