"""Payload encryption: a history at rest holds no plaintext of arguments, results or failure
messages; keys rotate; a codec server decrypts only for a caller with the token."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.worker import Replayer, Worker

import examples.ledger as ledger
from examples.ledger import store
from keel import KeelPlugin
from keel.activities import Catalog
from keel.codec import AesGcmCodec, parse_keys
from keel.codec_server import make_server
from keel.runs import get_report, outcome
from keel.shared.errors import CodecError
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import PLAN_RUNNER, AgentRunInput, PlanSpec, RunReport, StepSpec
from tests import sample_tools

CATALOG = Catalog.from_modules([ledger, sample_tools])
K1, K2 = os.urandom(32), os.urandom(32)


async def run_marked(client: Client, marker: str) -> tuple[str, RunReport]:
    """A run whose args, result and failure message all carry `marker`."""
    plan = PlanSpec(
        goal="codec",
        steps=[
            StepSpec(
                title="pay", tool="post_entry", args={"account": "qi", "amount": 3, "memo": marker}
            ),
            StepSpec(title="fail", tool="always_fails", args={"label": f"{marker}-in-error"}),
        ],
    )
    queue, run_id = f"codec-{uuid.uuid4().hex[:6]}", f"codec-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue):
        report = await outcome(
            await client.start_workflow(
                AgentWorkflow.run,
                AgentRunInput(agent=PLAN_RUNNER, goal=f"codec {marker}", plan=plan),
                id=run_id,
                task_queue=queue,
            )
        )
    return run_id, report


async def raw_bytes(client: Client, run_id: str) -> bytes:
    """The history as the server stores it: every event's protobuf bytes."""
    history = await client.get_workflow_handle(run_id).fetch_history()
    return b"".join(event.SerializeToString() for event in history.events)


async def test_history_at_rest_has_no_plaintext(ts_client: Client, ledger_db: Path) -> None:
    target = ts_client.service_client.config.target_host
    codec = AesGcmCodec([("k1", K1)])
    sealed = await Client.connect(target, plugins=[KeelPlugin(CATALOG, codec=codec)])
    plain = await Client.connect(target, plugins=[KeelPlugin(CATALOG)])
    marker = f"TOPSECRET-{uuid.uuid4().hex}"

    run_id, report = await run_marked(sealed, marker)
    assert report.status == "NOT_DONE"
    assert f"{marker}-in-error" in report.reason  # the key holder reads everything
    raw = await raw_bytes(ts_client, run_id)
    assert marker.encode() not in raw  # args, results, failure messages

    control_id, _ = await run_marked(plain, marker)  # the same run without the codec
    assert marker.encode() in await raw_bytes(ts_client, control_id)

    # Rotation: k2 now encrypts, k1 still decrypts the history written under it.
    rotated = AesGcmCodec([("k2", K2), ("k1", K1)])
    history = await sealed.get_workflow_handle(run_id).fetch_history()
    await Replayer(workflows=[], plugins=[KeelPlugin(codec=rotated)]).replay_workflow(history)
    # Without k1 the replay fails, typed CodecError (its message is encoded like any failure).
    with pytest.raises(Exception, match='type: "CodecError"'):
        only_new = Replayer(workflows=[], plugins=[KeelPlugin(codec=AesGcmCodec([("k2", K2)]))])
        await only_new.replay_workflow(history)


def test_rotation_and_explicit_errors() -> None:
    payload = Payload(metadata={"encoding": b"json/plain"}, data=b'{"amount": 7}')
    old = AesGcmCodec([("k1", K1)]).encrypt(payload)
    assert old.metadata["encryption-key-id"] == b"k1" and b"amount" not in old.data
    rotated = AesGcmCodec([("k2", K2), ("k1", K1)])
    assert rotated.decrypt(old) == payload
    assert rotated.encrypt(payload).metadata["encryption-key-id"] == b"k2"
    with pytest.raises(CodecError, match="key id 'k1', which is not among the keys"):
        AesGcmCodec([("k2", K2)]).decrypt(old)
    with pytest.raises(CodecError, match="does not decrypt with key 'k1'"):
        AesGcmCodec([("k1", K2)]).decrypt(old)
    with pytest.raises(CodecError, match="refused a plaintext payload"):
        rotated.decrypt(payload)  # plaintext reaching an encrypting side: refused ...
    migrating = AesGcmCodec([("k1", K1)], allow_plaintext=True)
    assert migrating.decrypt(payload) == payload  # ... unless histories before it still matter
    with pytest.raises(CodecError, match="must be 32 bytes"):
        parse_keys("k1:" + base64.b64encode(b"short").decode())
    with pytest.raises(CodecError, match="ID:BASE64KEY"):
        parse_keys(base64.b64encode(K1).decode())


def post(url: str, body: dict, token: str | None) -> tuple[int, dict]:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_codec_server_needs_the_token() -> None:
    codec = AesGcmCodec([("k1", K1)])
    server = make_server(codec, "s3cret-token", 0, "http://localhost:8233")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    sealed = codec.encrypt(Payload(metadata={"encoding": b"json/plain"}, data=b'"hello"'))
    body = {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in sealed.metadata.items()},
                "data": base64.b64encode(sealed.data).decode(),
            }
        ]
    }
    try:
        assert (await asyncio.to_thread(post, f"{url}/decode", body, None))[0] == 401
        assert (await asyncio.to_thread(post, f"{url}/decode", body, "wrong"))[0] == 401
        status, decoded = await asyncio.to_thread(post, f"{url}/decode", body, "s3cret-token")
        assert status == 200
        assert base64.b64decode(decoded["payloads"][0]["data"]) == b'"hello"'
        status, encoded = await asyncio.to_thread(post, f"{url}/encode", decoded, "s3cret-token")
        assert status == 200 and encoded["payloads"][0]["metadata"]["encryption-key-id"]
        # The web UI sends no header: the token is in the endpoint's path (and it adds a query).
        ui = f"{url}/s3cret-token/decode?preserveStorageRefs=true"
        status, decoded = await asyncio.to_thread(post, ui, body, None)
        assert status == 200 and base64.b64decode(decoded["payloads"][0]["data"]) == b'"hello"'
        assert (await asyncio.to_thread(post, f"{url}/wrong/decode", body, None))[0] == 401
        assert (await asyncio.to_thread(post, f"{url}/x/s3cret-token/decode", body, None))[0] == 401
        # What the UI shows in plaintext (search attributes, say) passes as it is.
        status, same = await asyncio.to_thread(post, ui, decoded, None)
        assert (status, same) == (200, decoded)
    finally:
        server.shutdown()
    with pytest.raises(CodecError, match="needs KEEL_CODEC_TOKEN"):
        make_server(codec, "", 0, "x")


async def test_an_encrypting_worker_refuses_a_run_started_in_plaintext(
    ts_client: Client, ledger_db: Path
) -> None:
    """Issue 13, item 10; and a client without keys reading an encrypted run gets one line."""
    target = ts_client.service_client.config.target_host
    codec = AesGcmCodec([("k1", K1)])
    sealed = await Client.connect(target, plugins=[KeelPlugin(CATALOG, codec=codec)])
    plain = await Client.connect(target, plugins=[KeelPlugin(CATALOG)])
    queue = f"codec-{uuid.uuid4().hex[:6]}"
    plan = PlanSpec(
        goal="pay in clear",
        steps=[StepSpec(title="pay", tool="post_entry", args={"account": "cy", "amount": 3})],
    )
    run = AgentRunInput(agent=PLAN_RUNNER, goal=plan.goal, plan=plan)
    async with Worker(sealed, task_queue=queue):
        handle = await plain.start_workflow(
            AgentWorkflow.run, run, id=f"codec-{uuid.uuid4().hex[:8]}", task_queue=queue
        )
        failure = None
        for _ in range(200):
            history = await sealed.get_workflow_handle(handle.id).fetch_history()
            failed = [
                e for e in history.events if e.HasField("workflow_task_failed_event_attributes")
            ]
            if failed:
                failure = failed[0].workflow_task_failed_event_attributes.failure
                break
            await asyncio.sleep(0.05)
        assert failure is not None, "the encrypting worker ran the plaintext run"
        error = await sealed.data_converter.decode_failure(failure)
        assert "refused a plaintext payload" in str(error)
        await handle.terminate()
        sealed_run, _ = await run_marked(sealed, "readable-only-with-keys")
    assert store.balance("cy") == 0  # no step of the plaintext run ran
    with pytest.raises(CodecError, match="encrypted: set KEEL_CODEC_KEYS"):
        await get_report(plain, sealed_run)
