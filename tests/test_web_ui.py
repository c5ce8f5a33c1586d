"""The Temporal web UI, in a real headless Chromium, shows an encrypted run decoded through
Keel's codec server, configured as the README says (the token in the codec endpoint's path).

Skipped, saying so, where no Chromium is installed (Debian's `chromium` package; .ci/run
installs it when it can)."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.worker import Worker

import examples.ledger as ledger
import keel
from keel.codec import AesGcmCodec
from keel.devserver import start_dev_server
from tests.processes import spawn

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium here (install Debian's chromium package to run the web UI check)",
)
KEY = base64.b64encode(os.urandom(32)).decode()
TOKEN = uuid.uuid4().hex
# Flags for a machine with no internet: no background calls home, no first-run tasks.
QUIET = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture
async def codec_server() -> AsyncIterator[tuple[int, int]]:
    """`python -m keel.codec_server` as a user runs it; yields (its port, the UI's port)."""
    port, ui_port = free_port(), free_port()
    env = {"KEEL_CODEC_KEYS": f"k1:{KEY}", "KEEL_CODEC_TOKEN": TOKEN}
    origin = f"http://localhost:{ui_port}"
    module = ("-m", "keel.codec_server", "--port", str(port), "--origin", origin)
    proc = await spawn(sys.executable, *module, env=env)
    assert proc.stdout is not None
    said = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    assert f"its codec endpoint: http://localhost:{port}/<KEEL_CODEC_TOKEN>" in said, said
    try:
        yield port, ui_port
    finally:
        proc.terminate()
        await proc.wait()


async def test_the_web_ui_shows_an_encrypted_run_decoded(
    codec_server: tuple[int, int], ledger_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.async_api import async_playwright

    monkeypatch.setenv("KEEL_CODEC_KEYS", f"k1:{KEY}")  # keel.connect() encrypts with it
    port, ui_port = codec_server
    endpoint = f"http://localhost:{port}/{TOKEN}"
    env = await start_dev_server(
        ui=True, ui_port=ui_port, extra_args=["--ui-codec-endpoint", endpoint]
    )
    codec = AesGcmCodec([("k1", base64.b64decode(KEY))])
    goal = f"pay ann 1, secret-{uuid.uuid4().hex[:6]}"
    try:
        target = env.client.service_client.config.target_host
        client = await keel.connect(address=target)
        queue = f"ui-{uuid.uuid4().hex[:6]}"
        plugin = keel.KeelPlugin(keel.Catalog.from_modules([ledger]), codec=codec)
        async with Worker(client, task_queue=queue, plugins=[plugin]):
            plan = keel.PlanSpec(
                goal=goal,
                steps=[
                    keel.StepSpec(
                        title="pay", tool="post_entry", args={"account": "ann", "amount": 1}
                    )
                ],
                unverified_ok=True,
            )
            run = await keel.start(client, plan=plan, task_queue=queue)
            assert (await run.result()).status == "DONE"
        history = await client.get_workflow_handle(run.id).fetch_history()
        first = history.events[0].workflow_execution_started_event_attributes.input.payloads[0]
        summary = history.events[0].user_metadata.summary
        for payload in (first, summary):  # the input, and the summary the list shows
            assert payload.metadata["encoding"] == b"binary/encrypted"  # at rest: unreadable
        execution = (await client.get_workflow_handle(run.id).describe()).run_id
        url = (
            f"http://localhost:{ui_port}/namespaces/default/workflows/{run.id}/{execution}/history"
        )
        async with async_playwright() as browser_driver:
            browser = await browser_driver.chromium.launch(executable_path=CHROMIUM, args=QUIET)
            page = await browser.new_page()
            decoded: list[int] = []
            page.on(
                "response",
                lambda r: decoded.append(r.status) if f":{port}/" in r.url else None,
            )
            await page.goto(url, wait_until="networkidle")
            await page.get_by_text(goal).first.wait_for(timeout=20_000)
            await browser.close()
        assert decoded and set(decoded) == {200}, decoded  # every decode the UI asked for
    finally:
        await env.shutdown()
